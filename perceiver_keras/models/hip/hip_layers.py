"""The layers of the Hierarchical Perceiver (HiP, Carreira et al. 2022).

Numerics follow DeepMind's `hierarchical_perceiver` (`perceiver_blocks.py`,
`perceiver_helpers.py`). Every array inside the model is grouped,
`[B, G, N, C]`: groups never interact inside a block; attention runs on
each group independently (groups are folded into the batch axis for the
shared `PerceiverAttention`). Between blocks the latents are regrouped
(`HiPRegroup`), and the grouper (`HiPGroup` / `HiPUngroup`) maps the
per-modality inputs `[B, M_m, C]` to and from groups.

Every MLP is Linear -> squared ReLU -> Linear; every LayerNorm has epsilon
1e-5; every Linear has a bias (except the position-encoding projection).
"""

import math

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.attention import PerceiverAttention
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.utils import apply_dropout
from perceiver_keras.layers.utils import layer_norm
from perceiver_keras.models.attention_maps import call_recording
from perceiver_keras.models.attention_maps import then

# Haiku's `VarianceScaling(1.0)`: fan-in, truncated normal.
HAIKU_INIT = "variance_scaling"
REGROUP_TYPES = ("reshape", "transpose_reshape")


def squared_relu(x):
    return ops.square(ops.relu(x))


def group_plan(index_dims, num_groups):
    """How DeepMind's `ConstNumGrouper` splits modalities into groups.

    Every modality gets one group; each extra group goes to the modality
    with the most elements per group (first wins ties). Returns
    `(groups_per_modality, elements_per_group)`, the latter padded to the
    largest modality's share.
    """
    index_dims = [int(n) for n in index_dims]
    if len(index_dims) > num_groups:
        raise ValueError(
            f"HiP needs at least one group per modality: {len(index_dims)} "
            f"modalities but `num_groups[0]`={num_groups}."
        )
    groups = [1] * len(index_dims)
    per_group = [float(n) for n in index_dims]
    for _ in range(num_groups - len(index_dims)):
        m = int(np.argmax(per_group))
        groups[m] += 1
        per_group[m] = index_dims[m] / groups[m]
    return groups, int(math.ceil(max(per_group)))


def _kept(length, drop):
    """Length of `x[:length - drop]` with Python's slice semantics."""
    return len(range(length)[: length - drop])


class _Grouping(keras.layers.Layer):
    """What `HiPGroup` and `HiPUngroup` share: the grouping plan.

    Args:
        index_dims: elements per modality, in model order.
        num_groups: groups of the first block.
        concatenate: DeepMind's `ConcatenateGrouper` (Perceiver IO: all
            modalities concatenated into one group, no padding) instead of
            `ConstNumGrouper`.
    """

    def __init__(self, index_dims, num_groups=1, concatenate=False, **kwargs):
        super().__init__(**kwargs)
        self.index_dims = [int(n) for n in index_dims]
        self.num_groups = int(num_groups)
        self.concatenate = bool(concatenate)
        if concatenate:
            self.groups_per_modality = [1] * len(self.index_dims)
            self.group_length = sum(self.index_dims)
        else:
            self.groups_per_modality, self.group_length = group_plan(
                self.index_dims, self.num_groups
            )

    def paddings(self, m):
        """`(final_padding, group_padding)` of modality `m`."""
        n, g = self.index_dims[m], self.groups_per_modality[m]
        final = g * math.ceil(n / g) - n
        return final, self.group_length - (n + final) // g

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "index_dims": self.index_dims,
                "num_groups": self.num_groups,
                "concatenate": self.concatenate,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPGroup(_Grouping):
    """Per-modality `[B, M_m, C]` -> grouped, zero-padded `[B, G, M, C]`.

    Each modality is padded at its end to a multiple of its group count,
    split into contiguous chunks, and every chunk padded at its end to M.
    """

    def call(self, inputs):
        if self.concatenate:
            return ops.expand_dims(ops.concatenate(list(inputs), axis=1), 1)
        grouped = []
        for m, x in enumerate(inputs):
            final, padding = self.paddings(m)
            groups = self.groups_per_modality[m]
            x = ops.pad(x, ((0, 0), (0, final), (0, 0)))
            x = ops.reshape(x, (-1, groups, x.shape[1] // groups, x.shape[2]))
            x = ops.pad(x, ((0, 0), (0, 0), (0, padding), (0, 0)))
            grouped.append(x)
        return ops.concatenate(grouped, axis=1)

    def compute_output_shape(self, input_shapes):
        first = input_shapes[0]
        groups = 1 if self.concatenate else self.num_groups
        return (first[0], groups, self.group_length, first[-1])


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPUngroup(_Grouping):
    """Grouped `[B, G, N, C]` -> one `[B, M'_m, C]` per modality.

    The inverse of `HiPGroup`, applied with the same slicing to any array of
    the same groups: per modality its groups, each group's last
    `group_padding` positions dropped, groups flattened in order, the last
    `final_padding` positions dropped. DeepMind's `latents` output applies
    this to the last block's `N` latents per group, so `M'_m` can differ from
    `M_m` there (Python slicing, as the reference does).
    """

    def _ranges(self, length):
        if self.concatenate:
            start = 0
            for n in self.index_dims:
                stop = start + n
                yield 0, 1, len(range(length)[start:stop]), (start, stop)
                start = stop
            return
        first = 0
        for m, groups in enumerate(self.groups_per_modality):
            final, padding = self.paddings(m)
            kept = _kept(length, padding)
            yield first, groups, _kept(groups * kept, final), (kept, final)
            first += groups

    def call(self, grouped):
        length = grouped.shape[2]
        outputs = []
        for first, groups, _, (a, b) in self._ranges(length):
            if self.concatenate:
                outputs.append(grouped[:, 0, a:b, :])
                continue
            x = grouped[:, first:first + groups, :a, :]
            x = ops.reshape(
                x, (ops.shape(x)[0], groups * a, grouped.shape[3])
            )
            outputs.append(x[:, : x.shape[1] - b, :])
        return outputs

    def compute_output_shape(self, grouped_shape):
        return [
            (grouped_shape[0], size, grouped_shape[3])
            for _, _, size, _ in self._ranges(grouped_shape[2])
        ]


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPRegroup(keras.layers.Layer):
    """`[B, G, N, C]` -> `[B, G', G*N/G', C]` between blocks.

    `reshape` merges neighbouring groups (row-major); `transpose_reshape`
    swaps the group and index axes first, mixing all groups.
    """

    def __init__(self, num_groups, regroup_type="reshape", **kwargs):
        super().__init__(**kwargs)
        if regroup_type not in REGROUP_TYPES:
            raise ValueError(
                f"`regroup_type` must be one of {REGROUP_TYPES}. "
                f"Received: regroup_type={regroup_type!r}."
            )
        self.num_groups = int(num_groups)
        self.regroup_type = regroup_type

    def call(self, x):
        groups, length, channels = x.shape[1], x.shape[2], x.shape[3]
        if self.regroup_type == "transpose_reshape":
            x = ops.swapaxes(x, 1, 2)
        return ops.reshape(
            x, (-1, self.num_groups, groups * length // self.num_groups,
                channels)
        )

    def compute_output_shape(self, input_shape):
        b, g, n, c = input_shape
        return (b, self.num_groups, g * n // self.num_groups, c)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_groups": self.num_groups, "regroup_type": self.regroup_type}
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPEmbedding(keras.layers.Layer):
    """One modality: Linear embedding plus a learned position encoding.

    `pos_embs` `[index_dim, num_channels]`, projected by a bias-free Linear
    when `project_position_encoding` (DeepMind: when
    `num_position_encoding_channels` differs from the embedding width).
    Returns `(embedded + position, position)`; the position encoding,
    broadcast over the batch, is the MAE query of this modality.
    """

    def __init__(
        self, index_dim, num_channels, project_position_encoding=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.index_dim = int(index_dim)
        self.num_channels = int(num_channels)
        self.project_position_encoding = bool(project_position_encoding)

    def build(self, input_shape):
        self.embed = PerceiverDense(
            self.num_channels, kernel_initializer=HAIKU_INIT,
            dtype=self.dtype_policy, name="embed",
        )
        self.embed.build(input_shape)
        self.position_encoding = self.add_weight(
            name="position_encoding",
            shape=(self.index_dim, self.num_channels),
            initializer=HAIKU_INIT,
        )
        self.position_projection = None
        if self.project_position_encoding:
            self.position_projection = PerceiverDense(
                self.num_channels, use_bias=False,
                kernel_initializer=HAIKU_INIT, dtype=self.dtype_policy,
                name="position_projection",
            )
            self.position_projection.build((None, self.num_channels))
        self.built = True

    def call(self, x):
        position = ops.cast(self.position_encoding, self.compute_dtype)
        if self.position_projection is not None:
            position = self.position_projection(position)
        position = ops.broadcast_to(
            position[None], (ops.shape(x)[0],) + tuple(position.shape)
        )
        return self.embed(x) + position, position

    def compute_output_shape(self, input_shape):
        shape = (input_shape[0], self.index_dim, self.num_channels)
        return shape, shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "index_dim": self.index_dim,
                "num_channels": self.num_channels,
                "project_position_encoding": self.project_position_encoding,
            }
        )
        return config


def _dense(units, name, dtype, use_bias=True):
    return PerceiverDense(
        units, use_bias=use_bias, kernel_initializer=HAIKU_INIT, dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPMLP(keras.layers.Layer):
    """Linear(w*C) -> squared ReLU -> Linear(C) -> dropout."""

    def __init__(self, widening_factor=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.widening_factor = int(widening_factor)
        self.dropout = float(dropout)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = self.widening_factor * channels
        self.hidden_dense = _dense(hidden, "hidden", self.dtype_policy)
        self.hidden_dense.build(input_shape)
        self.output_dense = _dense(channels, "output", self.dtype_policy)
        self.output_dense.build(tuple(input_shape[:-1]) + (hidden,))
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.built = True

    def call(self, x, training=None):
        x = self.output_dense(squared_relu(self.hidden_dense(x)))
        return apply_dropout(self.dropout_layer, x, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"widening_factor": self.widening_factor, "dropout": self.dropout}
        )
        return config


def _fold(x):
    """`[B, G, N, C]` -> `[B*G, N, C]`: groups attend independently."""
    return ops.reshape(x, (-1, x.shape[2], x.shape[3]))


def _unfold(x, groups):
    return ops.reshape(x, (-1, groups, x.shape[1], x.shape[2]))


def _unfold_weights(result, groups, return_attention):
    """`(output, [B*G, H, Q, K] weights)` -> weights `[B, G, H, Q, K]`."""
    if not return_attention:
        return result
    out, weights = result
    return out, ops.reshape(weights, (-1, groups) + tuple(weights.shape[1:]))


class _AttentionOptions(keras.layers.Layer):
    """Attention implementation options, passed to `PerceiverAttention`."""

    def __init__(
        self, num_heads=1, attention_implementation="auto",
        key_value_chunk_size=None, **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size

    def _attention(self, query_shape, key_value_shape, channels):
        attention = PerceiverAttention(
            num_heads=self.num_heads,
            qk_channels=channels,
            v_channels=channels,
            output_channels=query_shape[-1],
            kernel_initializer=HAIKU_INIT,
            attention_implementation=self.attention_implementation,
            key_value_chunk_size=self.key_value_chunk_size,
            dtype=self.dtype_policy,
            name="attention",
        )
        attention.build(query_shape, key_value_shape)
        return attention

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPCrossAttention(_AttentionOptions):
    """Grouped queries `[B, G, N, Cq]` attend to grouped inputs `[B, G, M, C]`.

    `a = Attn(LN(q), LN(x))` with query/key and value width C (the inputs'),
    output width Cq; `a = a + q` when `use_post_attention_residual`; then
    `a + MLP(LN(a))`.
    """

    def __init__(
        self, widening_factor=1, use_post_attention_residual=True, **kwargs
    ):
        super().__init__(**kwargs)
        self.widening_factor = int(widening_factor)
        self.use_post_attention_residual = bool(use_post_attention_residual)

    def build(self, query_shape, inputs_shape):
        q3 = (None,) + tuple(query_shape[2:])
        kv3 = (None,) + tuple(inputs_shape[2:])
        self.query_norm = layer_norm("query_norm", self.dtype_policy)
        self.query_norm.build(q3)
        self.key_value_norm = layer_norm("key_value_norm", self.dtype_policy)
        self.key_value_norm.build(kv3)
        self.attention = self._attention(q3, kv3, inputs_shape[-1])
        self.mlp_norm = layer_norm("mlp_norm", self.dtype_policy)
        self.mlp_norm.build(q3)
        self.mlp = HiPMLP(
            self.widening_factor, dtype=self.dtype_policy, name="mlp"
        )
        self.mlp.build(q3)
        self.built = True

    def call(self, query, inputs, training=None, return_attention=False):
        """With `return_attention`, returns `(output, weights)`, the weights
        `[B, G, heads, N, M]` per group (see `PerceiverAttention`)."""
        groups = query.shape[1]
        q = _fold(query)
        a = self.attention(
            self.query_norm(q), _fold(inputs), training=training,
            key_value_norm=self.key_value_norm,
            return_attention=return_attention,
        )

        def finish(a):
            if self.use_post_attention_residual:
                a = a + q
            a = a + self.mlp(self.mlp_norm(a), training=training)
            return _unfold(a, groups)

        return _unfold_weights(then(a, return_attention, finish), groups,
                               return_attention)

    def compute_output_shape(self, query_shape, inputs_shape):
        return query_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "widening_factor": self.widening_factor,
                "use_post_attention_residual":
                    self.use_post_attention_residual,
            }
        )
        return config


def drop_path(x, rate, seed_generator, training):
    """DeepMind's `StochasticDepth` (no rescaling): zeroes whole examples."""
    if not training or rate <= 0:
        return x
    shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
    r = keras.random.uniform(shape, dtype=x.dtype, seed=seed_generator)
    return x * ops.floor(1.0 - rate + r)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPSelfAttention(_AttentionOptions):
    """`x = x + Attn(LN(x))`, `x = x + MLP(LN(x))` within each group.

    `dropout` applies to the attention output and the MLP output,
    `drop_path_rate` drops both residual branches per example (training
    only, no rescaling), as DeepMind's `SelfAttention`.
    """

    def __init__(
        self, widening_factor=4, dropout=0.0, drop_path_rate=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.widening_factor = int(widening_factor)
        self.dropout = float(dropout)
        self.drop_path_rate = float(drop_path_rate)

    def build(self, input_shape):
        x3 = (None,) + tuple(input_shape[2:])
        self.attention_norm = layer_norm("attention_norm", self.dtype_policy)
        self.attention_norm.build(x3)
        self.attention = self._attention(x3, x3, input_shape[-1])
        self.mlp_norm = layer_norm("mlp_norm", self.dtype_policy)
        self.mlp_norm.build(x3)
        self.mlp = HiPMLP(
            self.widening_factor, self.dropout, dtype=self.dtype_policy,
            name="mlp",
        )
        self.mlp.build(x3)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.seed_generator = keras.random.SeedGenerator(0)
        self.built = True

    def call(self, x, training=None, return_attention=False):
        """With `return_attention`, returns `(output, weights)`, the weights
        `[B, G, heads, N, N]` per group."""
        groups = x.shape[1]

        def branch(y):  # [B*G, N, C] -> [B, G, N, C], dropped per example
            return drop_path(
                _unfold(y, groups), self.drop_path_rate,
                self.seed_generator, training,
            )

        def finish(a, x=x):
            x = x + branch(apply_dropout(self.dropout_layer, a, training))
            y = self.mlp(self.mlp_norm(_fold(x)), training=training)
            return x + branch(y)

        normed = self.attention_norm(_fold(x))
        a = self.attention(normed, normed, training=training,
                           return_attention=return_attention)
        return _unfold_weights(then(a, return_attention, finish), groups,
                               return_attention)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "widening_factor": self.widening_factor,
                "dropout": self.dropout,
                "drop_path_rate": self.drop_path_rate,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPBlock(keras.layers.Layer):
    """Learned latents per group cross-attend, then self-attention layers.

    Input `[B, G, M, C_in]` (already regrouped to `num_groups`); output
    `[B, G, N, num_channels]`. The latent array holds `G * N_eval` rows,
    group g using rows `g*N .. (g+1)*N - 1`. With `index_dim_train <
    index_dim`, training draws a random subset of `index_dim_train` latents
    per example and group (DeepMind's latent subsampling); evaluation uses
    all `index_dim`.

    `skip` (U-Net, decoder blocks): an earlier block's output with the same
    groups and latents, added to the latents before the cross-attention;
    projected by a Linear when its width differs.
    """

    def __init__(
        self,
        num_groups,
        index_dim,
        num_channels,
        num_self_attend_layers,
        num_self_attend_heads,
        self_attend_widening_factor=4,
        num_cross_attend_heads=1,
        cross_attend_widening_factor=1,
        index_dim_train=None,
        dropout=0.0,
        drop_path_rate=0.0,
        attention_implementation="auto",
        key_value_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, heads in (
            ("num_self_attend_heads", num_self_attend_heads),
            ("num_cross_attend_heads", num_cross_attend_heads),
        ):
            if num_channels % heads:
                raise ValueError(
                    f"`{name}`={heads} must divide the block's channels "
                    f"{num_channels}."
                )
        if index_dim_train is not None and index_dim_train > index_dim:
            raise ValueError(
                f"`index_dim_train` must be at most `index_dim`={index_dim}. "
                f"Received: index_dim_train={index_dim_train}."
            )
        self.num_groups = int(num_groups)
        self.index_dim = int(index_dim)
        self.num_channels = int(num_channels)
        self.num_self_attend_layers = int(num_self_attend_layers)
        self.num_self_attend_heads = int(num_self_attend_heads)
        self.self_attend_widening_factor = int(self_attend_widening_factor)
        self.num_cross_attend_heads = int(num_cross_attend_heads)
        self.cross_attend_widening_factor = int(cross_attend_widening_factor)
        self.index_dim_train = index_dim_train
        self.dropout = float(dropout)
        self.drop_path_rate = float(drop_path_rate)
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size

    def build(self, inputs_shape, skip_shape=None):
        g, n, c = self.num_groups, self.index_dim, self.num_channels
        if inputs_shape[1] != g:
            raise ValueError(
                f"Block `{self.name}` expects {g} groups. Received input "
                f"shape {tuple(inputs_shape)}."
            )
        attention_options = dict(
            attention_implementation=self.attention_implementation,
            key_value_chunk_size=self.key_value_chunk_size,
            dtype=self.dtype_policy,
        )
        self.latents = self.add_weight(
            name="latents", shape=(g * n, c), initializer=HAIKU_INIT
        )
        self.skip_projection = None
        if skip_shape is not None and skip_shape[-1] != c:
            self.skip_projection = _dense(c, "skip_projection",
                                          self.dtype_policy)
            self.skip_projection.build(skip_shape)
        query_shape = (inputs_shape[0], g, n, c)
        self.cross_attention = HiPCrossAttention(
            widening_factor=self.cross_attend_widening_factor,
            use_post_attention_residual=True,
            num_heads=self.num_cross_attend_heads,
            name="cross_attention",
            **attention_options,
        )
        self.cross_attention.build(query_shape, inputs_shape)
        self.self_attentions = []
        for i in range(self.num_self_attend_layers):
            layer = HiPSelfAttention(
                widening_factor=self.self_attend_widening_factor,
                dropout=self.dropout,
                drop_path_rate=self.drop_path_rate,
                num_heads=self.num_self_attend_heads,
                name=f"self_attention_{i}",
                **attention_options,
            )
            layer.build(query_shape)
            self.self_attentions.append(layer)
        self.seed_generator = keras.random.SeedGenerator(0)
        self.built = True

    def _latent_queries(self, batch, training):
        g, n, c = self.num_groups, self.index_dim, self.num_channels
        latents = ops.reshape(
            ops.cast(self.latents, self.compute_dtype), (1, g, n, c)
        )
        latents = ops.broadcast_to(latents, (batch, g, n, c))
        n_train = self.index_dim_train
        if not training or n_train is None or n_train == n:
            return latents
        # A random subset of the latents per example and group, drawn
        # without replacement (DeepMind shuffles and takes the first ones).
        scores = keras.random.uniform((batch, g, n), seed=self.seed_generator)
        indices = ops.argsort(scores, axis=-1)[..., :n_train]
        return ops.take_along_axis(latents, indices[..., None], axis=2)

    def call(self, inputs, skip=None, training=None, attention_names=()):
        """With `attention_names` (names of this block's attention layers:
        `cross_attention`, `self_attention_{i}`), returns `(output,
        {name: weights})`."""
        queries = self._latent_queries(ops.shape(inputs)[0], training)
        if skip is not None:
            if self.skip_projection is not None:
                skip = self.skip_projection(skip)
            queries = queries + skip
        maps = {}
        z = call_recording(self.cross_attention, "cross_attention",
                           attention_names, maps, queries, inputs,
                           training=training)
        for layer in self.self_attentions:
            z = call_recording(layer, layer.name, attention_names, maps, z,
                               training=training)
        return (z, maps) if attention_names else z

    def compute_output_shape(self, inputs_shape, skip_shape=None):
        return (inputs_shape[0], self.num_groups, self.index_dim,
                self.num_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_groups": self.num_groups,
                "index_dim": self.index_dim,
                "num_channels": self.num_channels,
                "num_self_attend_layers": self.num_self_attend_layers,
                "num_self_attend_heads": self.num_self_attend_heads,
                "self_attend_widening_factor":
                    self.self_attend_widening_factor,
                "num_cross_attend_heads": self.num_cross_attend_heads,
                "cross_attend_widening_factor":
                    self.cross_attend_widening_factor,
                "index_dim_train": self.index_dim_train,
                "dropout": self.dropout,
                "drop_path_rate": self.drop_path_rate,
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPReconstructionHead(HiPCrossAttention):
    """Grouped queries (position encodings) read grouped latents out.

    DeepMind's `ReconstructionHead`: one head, widening 1, no post-attention
    residual; output width = query width.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("use_post_attention_residual", False)
        kwargs.setdefault("num_heads", 1)
        kwargs.setdefault("widening_factor", 1)
        super().__init__(**kwargs)
