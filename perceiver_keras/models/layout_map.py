"""Model-parallel layouts for every family's backbone, from one rule table.

`keras.distribution.ModelParallel` places each variable by looking its path
up in a `keras.distribution.LayoutMap` (regexes, matched in full). All the
families build their blocks from the same parts, whose variables end in the
same names (`attention/query/kernel`, `mlp/hidden/kernel`, ...), so one
table serves them all; a family only says which of its layers are sharded.

The split is Megatron's tensor parallelism along the `model` mesh axis:
attention query/key/value kernels (and biases) by output channel, i.e. by
head, the attention output kernel by input channel; MLP hidden (and gate)
kernels by hidden unit, the MLP output kernel by input unit; the latent
array and token/position embeddings by channel. Everything else (norms,
adapters' convolutions, task heads, whose widths are often odd, like 261
Fourier-feature channels or a class count) is replicated, and every weight
is replicated along the `batch` axis, which splits the data.

A sharded width must be divisible by the size of the model axis (JAX
refuses uneven shards): heads * channels per head, MLP width, latent width.
"""

import keras

# (what follows a sharded block's path, axes; "M" is the model axis).
_ATTENTION_RULES = (
    ("attention/(query|key|value)/kernel", (None, "M")),
    ("attention/(query|key|value)/bias", ("M",)),
    ("attention/output/kernel", ("M", None)),
)
_MLP_RULES = (
    ("mlp/(hidden|gate)/kernel", (None, "M")),
    ("mlp/(hidden|gate)/bias", ("M",)),
    ("mlp/output/kernel", ("M", None)),
)
# Whole-variable rules: latent arrays and embeddings [rows, channels].
_CHANNELS = (None, "M")
_INPUT_UNITS = ("M", None)


def perceiver_layout_map(
    device_mesh,
    model_parallel_dim_name,
    data_parallel_dim_name,
    attention_blocks,
    mlp_blocks,
    channel_sharded=(),
    input_sharded=(),
):
    """A `LayoutMap` for one family.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: mesh axis the weights are split over.
        data_parallel_dim_name: mesh axis the batch is split over (checked
            to exist; weights are replicated along it).
        attention_blocks: regex of the paths of the blocks whose attention
            projections are split (e.g. `"self_attend_\\d+"`).
        mlp_blocks: regex of the paths of the blocks whose MLP is split.
        channel_sharded: regexes of whole variables `[rows, channels]` split
            by channel (latent arrays, embeddings).
        input_sharded: regexes of whole kernels `[in, out]` split by input
            unit (a language model's logits kernel).
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: device_mesh={device_mesh!r} "
            f"(of type {type(device_mesh).__name__})."
        )
    for argument, name in (
        ("model_parallel_dim_name", model_parallel_dim_name),
        ("data_parallel_dim_name", data_parallel_dim_name),
    ):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"`{argument}` must be one of the mesh's axis names "
                f"{list(device_mesh.axis_names)}. Received: {argument}="
                f"{name!r}."
            )

    def axes(spec):
        return tuple(model_parallel_dim_name if a == "M" else a for a in spec)

    layout_map = keras.distribution.LayoutMap(device_mesh)
    for blocks, rules in ((attention_blocks, _ATTENTION_RULES),
                          (mlp_blocks, _MLP_RULES)):
        for suffix, spec in rules:
            layout_map[f"({blocks})/{suffix}"] = axes(spec)
    for pattern in channel_sharded:
        layout_map[pattern] = axes(_CHANNELS)
    for pattern in input_sharded:
        layout_map[pattern] = axes(_INPUT_UNITS)
    return layout_map


class LayoutMapMixin:
    """keras-hub's `get_layout_map` for a backbone that declares its
    sharded layers as `layout_rules` (keyword arguments of
    `perceiver_layout_map`)."""

    layout_rules = None

    @classmethod
    def get_layout_map(
        cls,
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """A `keras.distribution.LayoutMap` for `ModelParallel` training.

        Attention projections are split by head and MLPs by hidden unit
        along `model_parallel_dim_name`, latent arrays and embeddings by
        channel (which layers: the class's `layout_rules`); weights are
        replicated along `data_parallel_dim_name`. The model axis size must
        divide the split widths. See `perceiver_keras.models.layout_map`.

        Example (JAX):
        ```python
        mesh = keras.distribution.DeviceMesh(
            (2, 4), ("batch", "model"), keras.distribution.list_devices())
        distribution = keras.distribution.ModelParallel(
            layout_map=Backbone.get_layout_map(mesh), batch_dim_name="batch")
        with distribution.scope():
            model = ...  # build or load, compile, fit as usual
        ```
        """
        return perceiver_layout_map(
            device_mesh, model_parallel_dim_name, data_parallel_dim_name,
            **cls.layout_rules,
        )
