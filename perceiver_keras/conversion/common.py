"""Shared machinery of the checkpoint converters.

A converter is a table: rows `(checkpoint_name, keras_variable, transform)`
where `transform` maps the checkpoint array to the variable's layout (None:
as is). `assign_weights` checks the table against the checkpoint both ways
before writing anything: every checkpoint tensor used, every model weight
assigned, every shape equal.
"""

import contextlib
import os
import shutil
import tempfile

import keras
import numpy as np


def block_layers(block):
    """`{role: layer}` of a cross- or self-attention block: what every
    checkpoint family stores for it, under names of its own."""
    attention = block.attention
    if hasattr(block, "key_value_norm"):  # PerceiverCrossAttentionBlock
        norms = {"query_norm": block.query_norm,
                 "key_value_norm": block.key_value_norm}
    else:
        norms = {"attention_norm": block.attention_norm}
    return {
        **norms,
        "query": attention.query_dense,
        "key": attention.key_dense,
        "value": attention.value_dense,
        "output": attention.output_dense,
        "mlp_norm": block.mlp_norm,
        "mlp_hidden": block.mlp.hidden_dense,
        "mlp_output": block.mlp.output_dense,
    }


class BlockNaming:
    """How one checkpoint family names an attention block's weights.

    `names` maps each role of `block_layers` (both block kinds) to the
    family's sub-name; `dense_rows(name, dense)` and `norm_rows(name, norm)`
    give the family's rows for one layer; `separator` joins scopes.
    """

    def __init__(self, cross_names, self_names, dense_rows, norm_rows,
                 separator):
        self.cross_names, self.self_names = cross_names, self_names
        self.dense_rows, self.norm_rows = dense_rows, norm_rows
        self.separator = separator

    def rows(self, prefix, block):
        layers = block_layers(block)
        names = self.cross_names if "key_value_norm" in layers else (
            self.self_names)
        rows = []
        for role, layer in layers.items():
            name = f"{prefix}{self.separator}{names[role]}"
            if isinstance(layer, keras.layers.LayerNormalization):
                rows += self.norm_rows(name, layer)
            else:
                rows += self.dense_rows(name, layer)
        return rows


def dense_rows(prefix, dense):
    """Haiku `Linear` (`w` [in, out], `b`) or `Conv2D` (`w` HWIO) -> Keras."""
    rows = [(f"{prefix}/w", dense.kernel, None)]
    if dense.use_bias:
        rows.append((f"{prefix}/b", dense.bias, None))
    return rows


def layer_norm_rows(prefix, norm):
    return [
        (f"{prefix}/scale", norm.gamma, None),
        (f"{prefix}/offset", norm.beta, None),
    ]


_HAIKU_ATTENTION = {
    "query": "attention/linear", "key": "attention/linear_1",
    "value": "attention/linear_2", "output": "attention/linear_3",
    "mlp_hidden": "mlp/linear", "mlp_output": "mlp/linear_1",
}
# DeepMind's Haiku modules (`CrossAttention`, `SelfAttention`).
HAIKU_BLOCKS = BlockNaming(
    cross_names={"query_norm": "layer_norm", "key_value_norm": "layer_norm_1",
                 "mlp_norm": "layer_norm_2", **_HAIKU_ATTENTION},
    self_names={"attention_norm": "layer_norm", "mlp_norm": "layer_norm_1",
                **_HAIKU_ATTENTION},
    dense_rows=dense_rows, norm_rows=layer_norm_rows, separator="/",
)


def cross_attention_rows(prefix, block):
    """Rows for a `PerceiverCrossAttentionBlock` in DeepMind's naming."""
    return HAIKU_BLOCKS.rows(prefix, block)


def self_attention_rows(prefix, block):
    """Rows for a `PerceiverSelfAttentionBlock` in DeepMind's naming."""
    return HAIKU_BLOCKS.rows(prefix, block)


def backbone_options(config, table, shape_for_attention_key, **fixed):
    """`PerceiverBackbone` arguments from one source's encoder config.

    `table` maps backbone arguments (plus `qk_channels`, `v_channels`) to
    `(source key, source default)`; `fixed` are set as given. Both sources
    pass `qk_channels`/`v_channels` to the cross-attention and every
    self-attention alike; with shape-for-attention `"q"` the
    cross-attention's default query/key width is the latent width instead
    of the input width.
    """
    options = {arg: config.get(key, default)
               for arg, (key, default) in table.items()}
    shape_for_attention = config.get(shape_for_attention_key, "kv")
    if shape_for_attention not in ("kv", "q"):
        raise ValueError(
            f"`{shape_for_attention_key}` must be one of ['kv', 'q'] to "
            f"convert. Received: {shape_for_attention!r}."
        )
    qk, v = options.pop("qk_channels"), options.pop("v_channels")
    cross_qk = qk
    if qk is None and shape_for_attention == "q":
        cross_qk = options["latent_dim"]
    return dict(
        options,
        cross_attention_qk_channels=cross_qk,
        cross_attention_v_channels=v,
        self_attention_qk_channels=qk,
        self_attention_v_channels=v,
        **fixed,
    )


def assign_weights(model, rows, checkpoint):
    """Writes `checkpoint[name]` (transformed) into each row's variable.

    Raises ValueError listing unused checkpoint tensors, unassigned model
    weights and shape mismatches; nothing is written unless all agree.
    """
    assigned = {id(variable) for _, variable, _ in rows}
    unassigned = [v.path for v in model.weights if id(v) not in assigned]
    names = [name for name, _, _ in rows]
    missing = [name for name in names if name not in checkpoint]
    unused = sorted(set(checkpoint) - set(names))
    values, mismatched = [], []
    for name, variable, transform in rows:
        if name in missing:
            continue
        value = np.asarray(checkpoint[name])
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{name} {tuple(value.shape)} -> {variable.path} "
                f"{tuple(variable.shape)}"
            )
        values.append((variable, value))
    problems = [
        (missing, "named by the table but absent from the checkpoint"),
        (unused, "in the checkpoint but not used"),
        (unassigned, "model weights not assigned"),
        (mismatched, "shape mismatches"),
    ]
    report = [
        f"{len(items)} {what}:\n  " + "\n  ".join(items)
        for items, what in problems
        if items
    ]
    if report:
        raise ValueError("Checkpoint does not match the model.\n"
                         + "\n".join(report))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))


def write_directory_atomically(directory, write):
    """Calls `write(staging)` to fill a new directory, then puts it at
    `directory`, all or nothing.

    `staging` is a temporary sibling of `directory`, renamed into place only
    once `write` returns, so an error or interruption never leaves a
    half-written directory and an existing `directory` stays intact until
    the new one is complete; then it is replaced.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        write(staging)
        if not os.path.exists(directory):
            os.rename(staging, directory)
            return directory
        old = tempfile.mkdtemp(prefix=".old-", dir=parent)
        previous = os.path.join(old, "previous")
        os.rename(directory, previous)
        try:
            os.rename(staging, directory)
        except BaseException:
            os.rename(previous, directory)  # put the previous one back
            os.rmdir(old)
            raise
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def save_preset_atomically(task, preset_dir):
    """Saves `task` to `preset_dir`, all or nothing.

    The preset is written into a temporary sibling directory and renamed
    into place only once complete, so an error or interruption never leaves
    a half-written preset. An existing directory is replaced.
    """
    write_directory_atomically(preset_dir, task.save_to_preset)


def inference_mode():
    """A context for running a converted model on inputs, gradients off.

    Eager torch records every op of a call for backpropagation unless told
    not to; in the chunked cross-attention that keeps each chunk's
    `[B, H, Q, chunk]` scores alive until the call ends, i.e. the whole
    `[B, H, Q, M]` tensor the streaming path exists to avoid. TensorFlow and
    JAX record nothing outside a GradientTape / `jax.grad`.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
