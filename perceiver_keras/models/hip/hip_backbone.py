"""The Hierarchical Perceiver as a keras-hub `Backbone`.

Reproduces DeepMind's `HiP`, `HiPClassBottleneck` (with
`label_modalities`) and, with a single block, `PerceiverIO` from
google-deepmind/hierarchical_perceiver, including their reconstruction
heads: the model maps a dict of modalities to their reconstructions.
"""

import keras
from keras_hub.models import Backbone

from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.models.hip.hip_layers import HiPBlock
from perceiver_keras.models.hip.hip_layers import HiPEmbedding
from perceiver_keras.models.hip.hip_layers import HiPGroup
from perceiver_keras.models.hip.hip_layers import HiPReconstructionHead
from perceiver_keras.models.hip.hip_layers import HiPRegroup
from perceiver_keras.models.hip.hip_layers import HiPUngroup
from perceiver_keras.models.hip import hip_presets
from perceiver_keras.models.attention_maps import attention_names_from
from perceiver_keras.models.attention_maps import compute_attention_maps
from perceiver_keras.models.attention_maps import inputs_model
from perceiver_keras.models.input_validation import ValidatedInputsMixin
from perceiver_keras.models.input_validation import as_array_like
from perceiver_keras.models.input_validation import dtype_kind
from perceiver_keras.models.layout_map import LayoutMapMixin

# The blocks split by `get_layout_map`: every attention block of the stack
# and the reconstruction head.
HIP_BLOCKS = (
    r"block_\d+/(cross_attention|self_attention_\d+)|reconstruction_head"
)

PER_BLOCK_ARGS = (
    "num_groups",
    "num_self_attends_per_block",
    "z_index_dim",
    "num_z_channels",
    "num_cross_attend_heads",
    "num_self_attend_heads",
    "cross_attend_widening_factor",
    "self_attend_widening_factor",
)


def normalize_modalities(modalities):
    """`{name: (index_dim, channels)}` or `[[name, index_dim, channels]]`
    -> a list of `[name, index_dim, channels]`, order kept."""
    if isinstance(modalities, dict):
        modalities = [[k, *v] for k, v in modalities.items()]
    try:
        result = [[str(n), int(m), int(c)] for n, m, c in modalities]
    except (TypeError, ValueError) as e:
        raise ValueError(
            "`modalities` must map each modality name to (index_dim, "
            f"channels). Received: modalities={modalities!r}."
        ) from e
    names = [n for n, _, _ in result]
    if not result or len(set(names)) != len(names):
        raise ValueError(
            "`modalities` must name at least one modality, each once. "
            f"Received names {names}."
        )
    return result


def _per_block(name, value, num_blocks):
    # An int is the same for every block (the constructor's defaults).
    values = [value] * num_blocks if isinstance(value, int) else list(value)
    if len(values) != num_blocks:
        raise ValueError(
            f"`{name}` needs one entry per block ({num_blocks}, as "
            f"`z_index_dim`). Received: {name}={value!r}."
        )
    return [int(v) for v in values]


def validate_modalities(modalities, inputs, model_name):
    """`inputs` as `{name: array}` for `modalities` (`[name, M, C]`), or a
    ValueError naming the modality, the expected and the received shape."""
    names = [n for n, _, _ in modalities]
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(names):
        received = (sorted(inputs) if isinstance(inputs, dict)
                    else type(inputs).__name__)
        raise ValueError(
            f"{model_name} expects a dict with one array per modality "
            f"{names}. Received: {received}."
        )
    batch, checked = None, {}
    for name, index_dim, channels in modalities:
        x = as_array_like(inputs[name], name)
        shape = tuple(x.shape)
        if len(shape) != 3 or tuple(shape[1:]) != (index_dim, channels):
            raise ValueError(
                f"`{name}` must have shape (batch, {index_dim}, {channels}). "
                f"Received: {name}.shape={shape}."
            )
        if dtype_kind(x) != "float":
            raise ValueError(
                f"`{name}` must hold float data. Received dtype "
                f"{keras.backend.standardize_dtype(x.dtype)}."
            )
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise ValueError(
                "Every modality needs the same batch size. Received "
                f"{batch} and {name}.shape={shape}."
            )
        batch = shape[0] if batch is None else batch
        checked[name] = x
    return checked


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPBackbone(ValidatedInputsMixin, LayoutMapMixin, Backbone):
    """Hierarchical Perceiver: grouped blocks, a U-Net over groups.

    The modalities (each `[B, M_m, C_m]`) are embedded to
    `num_embedding_channels`, get learned position encodings, and are split
    into `num_groups[0]` groups (zero-padded; a group never mixes
    modalities). Block i regroups the latents to `num_groups[i]` groups,
    then per group learned latents `[z_index_dim[i], num_z_channels[i]]`
    cross-attend to the group, followed by `num_self_attends_per_block[i]`
    self-attention layers. The middle block (the processor) has one group;
    each decoder block adds the output of its mirror encoder block to its
    latents (U-Net skips). A reconstruction head (queries = the position
    encodings) reads every input element back from the last block, and a
    Linear per modality maps it to the input's channels.

    A single block (ints instead of per-block lists) is DeepMind's
    `PerceiverIO` template: all modalities concatenated into one group.

    Args:
        modalities: `{name: (index_dim, channels)}` (or a list of
            `[name, index_dim, channels]`), in the order DeepMind's model
            sees them (its dict order); the order decides the grouping and
            the parameter names.
        num_groups, num_self_attends_per_block, z_index_dim, num_z_channels,
        num_cross_attend_heads, num_self_attend_heads,
        cross_attend_widening_factor, self_attend_widening_factor: one entry
            per block, as DeepMind's `VARIANTS` (an int: every block).
        num_embedding_channels: width E every modality is embedded to.
        label_modalities: names of modalities that bypass the encoder and
            enter the processor (DeepMind's `HiPClassBottleneck`): embedded
            to the processor's input width, appended to its inputs, and read
            out from its output by their own reconstruction head.
        num_position_encoding_channels: when set and different from E, each
            modality's position encoding goes through a bias-free Linear
            (DeepMind's switch; the encoding itself always has E channels).
        regroup_type: "reshape" or "transpose_reshape".
        processor_index_dim_train / processor_index_dim_eval: latents of the
            processor at training / evaluation when they differ from
            `z_index_dim` (at most one; training draws a random subset).
        dropout_prob, drop_path_rate: self-attention dropout and stochastic
            depth, training only.
        attention_implementation, key_value_chunk_size: see
            `PerceiverAttention`.

    Call: a dict `{name: [B, M_m, C_m]}` of every modality. Returns a dict:
    `reconstruction/<m>` `[B, M_m, C_m]` for every modality,
    `latents/<m>` (the last block's latents, ungrouped as the inputs, as
    DeepMind's `latents` output) for the non-label modalities, and
    `block_<i>` `[B, G_i, N_i, C_i]` for every block.
    """

    # Sharded for ModelParallel (models/layout_map.py).
    layout_rules = dict(
        attention_blocks=HIP_BLOCKS,
        mlp_blocks=HIP_BLOCKS,
        channel_sharded=(
            r"block_\d+/latents", r"embedding_[^/]+/position_encoding",
        ),
    )

    def __init__(
        self,
        modalities,
        num_groups=None,
        num_self_attends_per_block=2,
        z_index_dim=128,
        num_z_channels=128,
        num_cross_attend_heads=1,
        num_self_attend_heads=2,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=2,
        num_embedding_channels=128,
        label_modalities=(),
        num_position_encoding_channels=None,
        regroup_type="reshape",
        processor_index_dim_train=None,
        processor_index_dim_eval=None,
        dropout_prob=0.0,
        drop_path_rate=0.0,
        attention_implementation="auto",
        key_value_chunk_size=None,
        dtype=None,
        **kwargs,
    ):
        modalities = normalize_modalities(modalities)
        num_blocks = 1 if isinstance(z_index_dim, int) else len(z_index_dim)
        if num_groups is None:
            num_groups = [1] * num_blocks
        per_block = {
            name: _per_block(name, value, num_blocks)
            for name, value in zip(
                PER_BLOCK_ARGS,
                (num_groups, num_self_attends_per_block, z_index_dim,
                 num_z_channels, num_cross_attend_heads,
                 num_self_attend_heads, cross_attend_widening_factor,
                 self_attend_widening_factor),
            )
        }
        groups = per_block["num_groups"]
        if num_blocks != 1 and (num_blocks < 3 or num_blocks % 2 == 0):
            raise ValueError(
                "HiP needs an odd number of blocks, at least 3 (encoder "
                "blocks, one processor, mirrored decoder blocks), or one "
                f"block (Perceiver IO). Received {num_blocks} blocks."
            )
        processor = num_blocks // 2
        if groups[processor] != 1:
            raise ValueError(
                f"The processor (block {processor}) must have 1 group. "
                f"Received: num_groups={groups}."
            )
        label_modalities = [str(n) for n in label_modalities]
        names = [n for n, _, _ in modalities]
        unknown = [n for n in label_modalities if n not in names]
        if unknown:
            raise ValueError(
                f"`label_modalities` {unknown} are not among the modalities "
                f"{names}."
            )
        main = [m for m in modalities if m[0] not in label_modalities]
        labels = [m for m in modalities if m[0] in label_modalities]
        if label_modalities and num_blocks == 1:
            raise ValueError(
                "`label_modalities` need a HiP (3 or more blocks); a single "
                "block has no separate processor."
            )
        if not main:
            raise ValueError(
                "At least one modality must not be a label modality. "
                f"Received modalities {names}, labels {label_modalities}."
            )
        if processor_index_dim_train is not None and (
            processor_index_dim_eval is not None
        ):
            raise ValueError(
                "Set at most one of `processor_index_dim_train` and "
                "`processor_index_dim_eval`. Received "
                f"{processor_index_dim_train} and {processor_index_dim_eval}."
            )
        concatenate = num_blocks == 1
        embedding_channels = int(num_embedding_channels)
        project = (
            num_position_encoding_channels is not None
            and num_position_encoding_channels != embedding_channels
        )

        # === Layers ===
        self.embeddings = {
            name: HiPEmbedding(
                index_dim, embedding_channels, project, dtype=dtype,
                name=f"embedding_{name}",
            )
            for name, index_dim, _ in main
        }
        index_dims = [m for _, m, _ in main]
        grouping = dict(
            index_dims=index_dims, num_groups=groups[0],
            concatenate=concatenate, dtype=dtype,
        )
        self.hip_blocks = []
        for i in range(num_blocks):
            index_dim, index_dim_train = per_block["z_index_dim"][i], None
            if i == processor and processor_index_dim_eval is not None:
                index_dim_train = index_dim
                index_dim = processor_index_dim_eval
            elif i == processor and processor_index_dim_train is not None:
                index_dim_train = processor_index_dim_train
            self.hip_blocks.append(
                HiPBlock(
                    num_groups=groups[i],
                    index_dim=index_dim,
                    num_channels=per_block["num_z_channels"][i],
                    num_self_attend_layers=per_block[
                        "num_self_attends_per_block"][i],
                    num_self_attend_heads=per_block[
                        "num_self_attend_heads"][i],
                    self_attend_widening_factor=per_block[
                        "self_attend_widening_factor"][i],
                    num_cross_attend_heads=per_block[
                        "num_cross_attend_heads"][i],
                    cross_attend_widening_factor=per_block[
                        "cross_attend_widening_factor"][i],
                    index_dim_train=index_dim_train,
                    dropout=dropout_prob,
                    drop_path_rate=drop_path_rate,
                    attention_implementation=attention_implementation,
                    key_value_chunk_size=key_value_chunk_size,
                    dtype=dtype,
                    name=f"block_{i}",
                )
            )
        # Labels enter the processor at the width of the latents entering it.
        label_channels = (
            per_block["num_z_channels"][processor - 1] if labels else None
        )
        self.label_embeddings = {
            name: HiPEmbedding(
                index_dim, label_channels, False, dtype=dtype,
                name=f"embedding_{name}",
            )
            for name, index_dim, _ in labels
        }
        head_options = dict(
            attention_implementation=attention_implementation,
            key_value_chunk_size=key_value_chunk_size,
            dtype=dtype,
        )
        self.label_reconstruction_head = (
            HiPReconstructionHead(name="label_reconstruction_head",
                                  **head_options)
            if labels else None
        )
        self.reconstruction_head = HiPReconstructionHead(
            name="reconstruction_head", **head_options
        )
        # DeepMind initialises the output projections to zero.
        self.unembeddings = {
            name: PerceiverDense(
                channels, kernel_initializer="zeros", dtype=dtype,
                name=f"unembedding_{name}",
            )
            for name, _, channels in modalities
        }

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=(index_dim, channels), name=name)
            for name, index_dim, channels in modalities
        }
        embedded = [self.embeddings[n](inputs[n]) for n, _, _ in main]
        z = HiPGroup(name="group_inputs", **grouping)([e[0] for e in embedded])
        queries = HiPGroup(name="group_queries", **grouping)(
            [e[1] for e in embedded]
        )
        intermediates = {"grouped/z": z, "grouped/mae_query": queries}
        outputs, hidden = {}, []
        for i, block in enumerate(self.hip_blocks):
            if i > 0:
                z = HiPRegroup(groups[i], regroup_type, dtype=dtype,
                               name=f"regroup_{i}")(z)
            if i == processor and labels:
                label_queries = {}
                parts = [z]
                for name, index_dim, _ in labels:
                    one_group = dict(index_dims=[index_dim], num_groups=1,
                                     dtype=dtype)
                    x, q = self.label_embeddings[name](inputs[name])
                    parts.append(HiPGroup(name=f"group_{name}",
                                          **one_group)([x]))
                    label_queries[name] = HiPGroup(
                        name=f"group_queries_{name}", **one_group
                    )([q])
                    intermediates[f"grouped/z/{name}"] = parts[-1]
                    intermediates[f"grouped/mae_query/{name}"] = (
                        label_queries[name]
                    )
                z = keras.layers.Concatenate(axis=2, dtype=dtype,
                                             name="append_labels")(parts)
            if i > processor:
                z = block(z, hidden[num_blocks - 1 - i])
            else:
                z = block(z)
            hidden.append(z)
            outputs[f"block_{i}"] = z
            if i == processor and labels:
                for name, index_dim, _ in labels:
                    read = self.label_reconstruction_head(
                        label_queries[name], z
                    )
                    intermediates[f"recon_head_grouped/{name}"] = read
                    (read,) = HiPUngroup(
                        index_dims=[index_dim], num_groups=1, dtype=dtype,
                        name=f"ungroup_{name}",
                    )(read)
                    outputs[f"reconstruction/{name}"] = (
                        self.unembeddings[name](read)
                    )
        read = self.reconstruction_head(queries, z)
        intermediates["recon_head_grouped"] = read
        reads = HiPUngroup(name="ungroup_reconstruction", **grouping)(read)
        latents = HiPUngroup(name="ungroup_latents", **grouping)(z)
        for (name, _, _), r, l in zip(main, reads, latents):
            outputs[f"reconstruction/{name}"] = self.unembeddings[name](r)
            outputs[f"latents/{name}"] = l
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self._intermediates = intermediates
        self._intermediates_model = None
        self._output_tensors = outputs

        # === Config ===
        self.modalities = modalities
        for name, values in per_block.items():
            setattr(self, name, values)
        self.num_embedding_channels = embedding_channels
        self.label_modalities = label_modalities
        self.num_position_encoding_channels = num_position_encoding_channels
        self.regroup_type = regroup_type
        self.processor_index_dim_train = processor_index_dim_train
        self.processor_index_dim_eval = processor_index_dim_eval
        self.dropout_prob = dropout_prob
        self.drop_path_rate = drop_path_rate
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size

    @property
    def num_blocks(self):
        return len(self.z_index_dim)

    @property
    def processor_index(self):
        return self.num_blocks // 2

    @property
    def input_modalities(self):
        """Non-label modalities, in model order."""
        return [n for n, _, _ in self.modalities
                if n not in self.label_modalities]

    def submodel(self, output_key, name=None):
        """A functional model of this backbone's layers computing only
        `output_key` (e.g. `reconstruction/label`): the layers it does not
        need (the decoder, for a label) are not run."""
        outputs = dict(self._output_tensors)
        if output_key not in outputs:
            raise ValueError(
                f"`output_key` must be one of {sorted(outputs)}. Received: "
                f"{output_key!r}."
            )
        return keras.Model(self.input, outputs[output_key], name=name)

    def intermediate_outputs(self, inputs):
        """The grouped arrays DeepMind's fixtures record, by fixture key
        (NumPy, computed in one compiled call):
        `grouped/z`, `grouped/mae_query` (block 0's input and the grouped
        MAE query), `recon_head_grouped` (head output before ungrouping),
        and their `/<label>` versions for label modalities."""
        if self._intermediates_model is None:
            self._intermediates_model = keras.Model(
                self.input, dict(self._intermediates)
            )
        return self._intermediates_model.predict_on_batch(
            self.validate_inputs(inputs)
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus the built-in architectures of
        DeepMind's `VARIANTS` (`hip_16`, `hip_256`, `hip_mini`, `hip_16x3`,
        `hip_io_mini`, `hip_io_c_50m`, `hip_io_c_150m`; weights none, so
        `load_weights=False`). `kwargs` override the preset's arguments,
        e.g. `modalities`."""
        if hip_presets.is_hip_preset(preset):
            hip_presets.check_no_weights(preset, load_weights)
            return cls(**hip_presets.preset_config(preset, **kwargs))
        return super().from_preset(preset, load_weights=load_weights,
                                   **kwargs)

    def validate_inputs(self, inputs):
        return validate_modalities(self.modalities, inputs, "HiP")

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in PER_BLOCK_ARGS})
        config.update(
            {
                "modalities": self.modalities,
                "num_embedding_channels": self.num_embedding_channels,
                "label_modalities": self.label_modalities,
                "num_position_encoding_channels":
                    self.num_position_encoding_channels,
                "regroup_type": self.regroup_type,
                "processor_index_dim_train": self.processor_index_dim_train,
                "processor_index_dim_eval": self.processor_index_dim_eval,
                "dropout_prob": self.dropout_prob,
                "drop_path_rate": self.drop_path_rate,
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
            }
        )
        return config

    @property
    def attention_layer_names(self):
        """The attention layers in the order they run:
        `block_{i}/cross_attention` (the block's latents read its groups:
        weights `[B, G_i, cross heads, N_i, M_i]`, `M_i` the group's inputs,
        zero padding included, as the model attends to it),
        `block_{i}/self_attention_{j}` (`[B, G_i, heads, N_i, N_i]`), and
        `reconstruction_head` (the inputs' position encodings read the
        last block: `[B, G_0, 1, M_0, N_last]`). The label modalities'
        reconstruction head is not among them."""
        names = []
        for block in self.hip_blocks:
            names.append(f"{block.name}/cross_attention")
            names.extend(f"{block.name}/{layer.name}"
                         for layer in block.self_attentions)
        return names + ["reconstruction_head"]

    def attention_maps(self, inputs, layers=None):
        """`{name: float32 NumPy weights}` of the layers asked for (see
        `attention_layer_names`; None: all), the softmax weights used,
        per group. Each block asked for runs once more on its inputs (the
        backbone's layers up to it, computed once); layers not asked for
        compute no weights. Outputs are unchanged (see
        `perceiver_keras.models.attention_maps`)."""
        names = attention_names_from(layers, self.attention_layer_names)
        asked = {}  # layer -> its names asked for, without the block prefix
        for name in names:
            owner, _, inner = name.rpartition("/")
            layer = self.get_layer(owner or name)
            asked.setdefault(layer, []).append(inner)
        layers = tuple(asked)

        def forward(inputs, names):
            arguments = inputs_model(self, layers)(inputs)
            maps = {}
            for layer in layers:
                args = arguments[layer.name]
                if layer is self.reconstruction_head:
                    _, maps[layer.name] = layer(*args, return_attention=True)
                    continue
                args = args if isinstance(args, (list, tuple)) else [args]
                _, inner = layer(*args, attention_names=asked[layer])
                maps.update({f"{layer.name}/{k}": v for k, v in inner.items()})
            return maps

        return compute_attention_maps(
            self, names, self.validate_inputs(inputs), forward
        )
