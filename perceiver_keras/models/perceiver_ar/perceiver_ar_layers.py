"""Layers of Perceiver AR: rotary attention and the two block kinds.

One implementation covers DeepMind's Haiku model and krasserm's PyTorch
model; their differences are constructor options (see
`PerceiverARBackbone`). Attention numerics follow both references: heads
split the channels head-major, scores are `q.k / sqrt(head_dim)`, masked
scores are *replaced* by a large negative number, so a query whose keys are
all masked averages uniformly over all keys (both references do this).
"""

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.attention import attend
from perceiver_keras.layers.chunked_attention import default_chunk_size
from perceiver_keras.layers.chunked_attention import resolve_implementation
from perceiver_keras.layers.chunked_attention import streaming_attend
from perceiver_keras.layers.chunked_attention import validate_implementation
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.models.attention_maps import then

ACTIVATIONS = ("squared_relu", "relu", "gelu_tanh", "gelu_erf")
IMPLEMENTATIONS = ("auto", "plain", "chunked")


def check_implementation(attention_implementation, key_value_chunk_size):
    if attention_implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`attention_implementation` must be one of {IMPLEMENTATIONS}. "
            f"Received: attention_implementation={attention_implementation!r}."
        )
    validate_implementation(attention_implementation, key_value_chunk_size)


def causal_key_mask(key_mask, key_limit, num_keys):
    """Bool `[B, Q, K]`: key j allowed for query q iff `key_mask[b, j]` and
    `j <= key_limit[b, q]`."""
    keys = ops.arange(num_keys, dtype=key_limit.dtype)[None, None, :]
    return ops.logical_and(keys <= key_limit[:, :, None],
                           ops.cast(key_mask, "bool")[:, None, :])


def activation_fn(name):
    if name == "squared_relu":
        return lambda x: ops.square(ops.relu(x))
    if name == "relu":
        return ops.relu
    if name == "gelu_tanh":
        return lambda x: ops.gelu(x, approximate=True)
    if name == "gelu_erf":
        return lambda x: ops.gelu(x, approximate=False)
    raise ValueError(
        f"`activation` must be one of {ACTIVATIONS}. Received: {name!r}."
    )


def rotary_inverse_frequencies(rotary_dim, max_wavelength, spacing):
    """`[rotary_dim // 2]` inverse frequencies, float32.

    "linspace" (DeepMind): `max_wavelength ** -((2/r) * linspace(0, r/2,
    r/2))`, endpoint included, so the last band is exactly
    `1/max_wavelength`. "arange" (krasserm, RoFormer):
    `1 / max_wavelength ** (arange(0, r, 2) / r)`.
    """
    bands = rotary_dim // 2
    if spacing == "linspace":
        exponent = (2.0 / rotary_dim) * np.linspace(0, bands, bands)
    elif spacing == "arange":
        exponent = np.arange(0, rotary_dim, 2) / rotary_dim
    else:
        raise ValueError(
            '`rotary_frequency_spacing` must be "linspace" or "arange". '
            f"Received: {spacing!r}."
        )
    exponent = exponent.astype(np.float32)
    return (1.0 / np.float32(max_wavelength) ** exponent).astype(np.float32)


def apply_rotary(x, positions, inverse_frequencies, num_rotated_heads):
    """Rotates adjacent channel pairs `(2i, 2i+1)` of the first channels.

    Args:
        x: `[B, T, H, D]`.
        positions: `[B, T]` (any numeric dtype).
        inverse_frequencies: `[r/2]` constant; the first `r` channels of the
            first `num_rotated_heads` heads rotate, the rest pass through.
    """
    rotary_dim = 2 * len(inverse_frequencies)
    freqs = np.repeat(np.asarray(inverse_frequencies, np.float32), 2)
    radians = ops.cast(positions, "float32")[..., None] * ops.convert_to_tensor(
        freqs
    )
    radians = ops.expand_dims(radians, 2)  # [B, T, 1, r]
    cos = ops.cast(ops.cos(radians), x.dtype)
    sin = ops.cast(ops.sin(radians), x.dtype)
    rotated = x[:, :, :num_rotated_heads, :rotary_dim]
    even, odd = rotated[..., 0::2], rotated[..., 1::2]
    spliced = ops.reshape(ops.stack([-odd, even], axis=-1), ops.shape(rotated))
    rotated = rotated * cos + spliced * sin
    parts = [rotated]
    if rotary_dim < x.shape[-1]:
        parts.append(x[:, :, :num_rotated_heads, rotary_dim:])
    heads = ops.concatenate(parts, axis=-1) if len(parts) > 1 else rotated
    if num_rotated_heads < x.shape[2]:
        heads = ops.concatenate([heads, x[:, :, num_rotated_heads:]], axis=2)
    return heads


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARAttention(keras.layers.Layer):
    """Multi-head attention with optional rotary encoding of q and k.

    Args:
        num_heads: heads; the width must be divisible by it.
        use_qkv_bias, use_output_bias: biases of the projections.
        rotary_fraction: fraction of each head's channels that rotate,
            rounded down to even (0: no rotary). DeepMind's
            `fraction_to_rotate`; krasserm: 0.5 with absolute positions,
            else 1.
        rotary_heads_fraction: fraction of heads that rotate (the first
            `floor(H * fraction)`), DeepMind's `fraction_heads_to_rotate`.
        rotary_max_wavelength, rotary_frequency_spacing: see
            `rotary_inverse_frequencies`.
        attention_dropout: dropout on the attention probabilities.
        attention_implementation: for calls with a causal key mask
            (`key_mask` + `key_limit`, the cross-attention): "plain" makes
            the `[B, H, Q, K]` scores, "chunked" streams over key chunks
            (memory flat in K), "auto" streams once the scores of one
            example exceed 2**25 values (as `PerceiverAttention`).
        key_value_chunk_size: keys per chunk (None: about 2**22 scores).
        remat: on the chunked path, recompute each chunk in the backward
            pass instead of keeping its `[B, H, Q, chunk]` probabilities,
            so training memory stays flat in K too.
    """

    def __init__(
        self,
        num_heads,
        use_qkv_bias=True,
        use_output_bias=True,
        rotary_fraction=0.0,
        rotary_heads_fraction=1.0,
        rotary_max_wavelength=10000,
        rotary_frequency_spacing="arange",
        attention_dropout=0.0,
        kernel_initializer="glorot_uniform",
        attention_implementation="auto",
        key_value_chunk_size=None,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_implementation(attention_implementation, key_value_chunk_size)
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size
        self.remat = remat
        self.num_heads = num_heads
        self.use_qkv_bias = use_qkv_bias
        self.use_output_bias = use_output_bias
        self.rotary_fraction = rotary_fraction
        self.rotary_heads_fraction = rotary_heads_fraction
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_frequency_spacing = rotary_frequency_spacing
        self.attention_dropout = attention_dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _dense(self, units, use_bias, name):
        return PerceiverDense(
            units,
            use_bias=use_bias,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, key_value_shape=None):
        key_value_shape = key_value_shape or query_shape
        channels = query_shape[-1]
        if channels % self.num_heads:
            raise ValueError(
                f"The width must be divisible by `num_heads`={self.num_heads}."
                f" Received: width={channels}."
            )
        self.head_dim = channels // self.num_heads
        rotary_dim = 2 * int(self.head_dim * self.rotary_fraction // 2)
        self.num_rotary_heads = int(self.num_heads * self.rotary_heads_fraction)
        self._frequencies = np.zeros((0,), np.float32)
        if rotary_dim and self.num_rotary_heads:
            self._frequencies = rotary_inverse_frequencies(
                rotary_dim, self.rotary_max_wavelength,
                self.rotary_frequency_spacing,
            )
        self.query_dense = self._dense(channels, self.use_qkv_bias, "query")
        self.key_dense = self._dense(channels, self.use_qkv_bias, "key")
        self.value_dense = self._dense(channels, self.use_qkv_bias, "value")
        self.output_dense = self._dense(
            channels, self.use_output_bias, "output"
        )
        self.query_dense.build(query_shape)
        self.key_dense.build(key_value_shape)
        self.value_dense.build(key_value_shape)
        self.output_dense.build(query_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy
        )
        self.built = True

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(
            x, (shape[0], shape[1], self.num_heads, self.head_dim)
        )

    def _rotate(self, x, positions):
        if not len(self._frequencies):
            return x
        return apply_rotary(
            x, positions, self._frequencies, self.num_rotary_heads
        )

    def queries(self, x, positions):
        """`[B, Q, C]` -> rotated `[B, Q, H, D]`."""
        return self._rotate(self._heads(self.query_dense(x)), positions)

    def keys_values(self, x, positions):
        """`[B, K, C]` -> rotated keys and values, `[B, K, H, D]` each."""
        keys = self._rotate(self._heads(self.key_dense(x)), positions)
        return keys, self._heads(self.value_dense(x))

    def attend(self, q, k, v, mask, training=None, return_attention=False):
        """With `return_attention`, returns `(output, weights)`: the float32
        `[B, H, Q, K]` softmax probabilities used (before dropout)."""
        dropout = None
        if self.attention_dropout > 0:
            dropout = lambda w: self.dropout_layer(w, training=training)
        out = attend(q, k, v, mask, wipe_fully_masked_rows=False,
                     dropout=dropout, return_weights=return_attention)
        return then(out, return_attention, self.output_dense)

    def implementation_for(self, num_queries, num_keys):
        """"plain" or "chunked" for a causal cross-attention of these sizes
        (unknown sizes count as large)."""
        chosen = resolve_implementation(
            self.attention_implementation, self.num_heads, num_queries,
            num_keys, dropout_active=True)  # never "fused"
        return "plain" if chosen == "plain" else "chunked"

    def call(self, query, key_value, query_positions, key_positions,
             mask=None, training=None, return_attention=False,
             key_mask=None, key_limit=None):
        """`mask`: bool `[B, Q, K]`; or `key_mask` `[B, K]` with `key_limit`
        `[B, Q]` (see `causal_key_mask`), which may take the chunked
        path."""
        q = self.queries(query, query_positions)
        if key_limit is not None:
            num_keys = key_value.shape[1]
            if not return_attention and self.implementation_for(
                    query.shape[1], num_keys) == "chunked":
                return self._streamed(q, key_value, key_positions, key_mask,
                                      key_limit, training)
            mask = causal_key_mask(key_mask, key_limit,
                                   ops.shape(key_value)[1])
        k, v = self.keys_values(key_value, key_positions)
        return self.attend(q, k, v, mask, training, return_attention)

    def _streamed(self, q, key_value, key_positions, key_mask, key_limit,
                  training):
        active = bool(training) and self.attention_dropout > 0
        chunk_size = self.key_value_chunk_size or default_chunk_size(
            self.num_heads, q.shape[1])
        out = streaming_attend(
            q, (key_value, key_positions), self.keys_values, self.head_dim,
            chunk_size, key_mask=key_mask, key_limit=key_limit,
            # A row with no allowed key averages all keys (both references).
            wipe_fully_masked_rows=False,
            dropout_rate=self.attention_dropout if active else 0.0,
            dropout_seed=(self.dropout_layer.seed_generator.next()
                          if active else None),
            remat=self.remat,
            variables=self.key_dense.weights + self.value_dense.weights,
        )
        return self.output_dense(out)

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return tuple(query_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "use_qkv_bias": self.use_qkv_bias,
                "use_output_bias": self.use_output_bias,
                "rotary_fraction": self.rotary_fraction,
                "rotary_heads_fraction": self.rotary_heads_fraction,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_frequency_spacing": self.rotary_frequency_spacing,
                "attention_dropout": self.attention_dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
                "remat": self.remat,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARMLP(keras.layers.Layer):
    """`x + Dense(act(Dense(LN(x))))`: the residual MLP of both blocks."""

    def __init__(self, widening_factor=4, activation="squared_relu",
                 use_bias=True, layer_norm_epsilon=1e-5,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.widening_factor = widening_factor
        self.activation = activation
        self.use_bias = use_bias
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._activation = activation_fn(activation)

    def build(self, input_shape):
        channels = input_shape[-1]
        init = keras.initializers.serialize(self.kernel_initializer)
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
            name="norm",
        )
        self.hidden_dense = PerceiverDense(
            channels * self.widening_factor, use_bias=self.use_bias,
            kernel_initializer=keras.initializers.get(init),
            dtype=self.dtype_policy, name="hidden",
        )
        self.output_dense = PerceiverDense(
            channels, use_bias=self.use_bias,
            kernel_initializer=keras.initializers.get(init),
            dtype=self.dtype_policy, name="output",
        )
        self.norm.build(input_shape)
        self.hidden_dense.build(input_shape)
        self.output_dense.build(
            tuple(input_shape[:-1]) + (channels * self.widening_factor,)
        )
        self.built = True

    def call(self, x):
        hidden = self._activation(self.hidden_dense(self.norm(x)))
        return x + self.output_dense(hidden)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "widening_factor": self.widening_factor,
                "activation": self.activation,
                "use_bias": self.use_bias,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


def _block_sublayers(block, attention_kwargs, mlp_kwargs):
    block.attention = PerceiverARAttention(
        **attention_kwargs, dtype=block.dtype_policy, name="attention"
    )
    block.mlp = PerceiverARMLP(**mlp_kwargs, dtype=block.dtype_policy,
                               name="mlp")


class _Block(keras.layers.Layer):
    """Options shared by both blocks (stored, returned by get_config)."""

    def __init__(self, num_heads, widening_factor=4,
                 activation="squared_relu", use_qkv_bias=True,
                 use_output_bias=True, use_mlp_bias=True,
                 rotary_fraction=0.0, rotary_heads_fraction=1.0,
                 rotary_max_wavelength=10000,
                 rotary_frequency_spacing="arange", attention_dropout=0.0,
                 layer_norm_epsilon=1e-5, kernel_initializer="glorot_uniform",
                 extra_attention_options=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.widening_factor = widening_factor
        self.activation = activation
        self.use_qkv_bias = use_qkv_bias
        self.use_output_bias = use_output_bias
        self.use_mlp_bias = use_mlp_bias
        self.rotary_fraction = rotary_fraction
        self.rotary_heads_fraction = rotary_heads_fraction
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_frequency_spacing = rotary_frequency_spacing
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        init = keras.initializers.serialize(self.kernel_initializer)
        _block_sublayers(
            self,
            dict(num_heads=num_heads, use_qkv_bias=use_qkv_bias,
                 use_output_bias=use_output_bias,
                 rotary_fraction=rotary_fraction,
                 rotary_heads_fraction=rotary_heads_fraction,
                 rotary_max_wavelength=rotary_max_wavelength,
                 rotary_frequency_spacing=rotary_frequency_spacing,
                 attention_dropout=attention_dropout,
                 kernel_initializer=init, **(extra_attention_options or {})),
            dict(widening_factor=widening_factor, activation=activation,
                 use_bias=use_mlp_bias, layer_norm_epsilon=layer_norm_epsilon,
                 kernel_initializer=init),
        )

    def _norm(self, name):
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "widening_factor": self.widening_factor,
                "activation": self.activation,
                "use_qkv_bias": self.use_qkv_bias,
                "use_output_bias": self.use_output_bias,
                "use_mlp_bias": self.use_mlp_bias,
                "rotary_fraction": self.rotary_fraction,
                "rotary_heads_fraction": self.rotary_heads_fraction,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_frequency_spacing": self.rotary_frequency_spacing,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARCrossAttentionBlock(_Block):
    """Latent queries attend to the whole context, then a residual MLP.

    `x = query + Attn(LN_q(query), keys)` (just `Attn(...)` without
    `use_query_residual`), then `x += MLP(x)`. The keys are `LN_kv(inputs)`
    (DeepMind). With `latents_in_keys` (krasserm) the last `N` key
    positions, which are the latents themselves, use `LN_q(query)` instead.
    """

    def __init__(self, num_heads, use_query_residual=True,
                 latents_in_keys=False, attention_implementation="auto",
                 key_value_chunk_size=None, remat=False, **kwargs):
        super().__init__(num_heads, extra_attention_options=dict(
            attention_implementation=attention_implementation,
            key_value_chunk_size=key_value_chunk_size, remat=remat), **kwargs)
        self.use_query_residual = use_query_residual
        self.latents_in_keys = latents_in_keys

    def build(self, query_shape, inputs_shape=None):
        inputs_shape = inputs_shape or query_shape
        self.query_norm = self._norm("query_norm")
        self.key_value_norm = self._norm("key_value_norm")
        self.query_norm.build(query_shape)
        self.key_value_norm.build(inputs_shape)
        self.attention.build(query_shape, inputs_shape)
        self.mlp.build(query_shape)
        self.built = True

    def key_input(self, inputs, normed_query):
        """What the keys/values are projected from, `[B, L, C]`."""
        if not self.latents_in_keys:
            return self.key_value_norm(inputs)
        num_latents = normed_query.shape[1]
        # ops.shape: the context length is unknown in a relaxed trace.
        prefix = inputs[:, : ops.shape(inputs)[1] - num_latents]
        return ops.concatenate(
            [self.key_value_norm(prefix), normed_query], axis=1
        )

    def finish(self, query, attended):
        x = query + attended if self.use_query_residual else attended
        return self.mlp(x)

    def call(self, query, inputs, query_positions, key_positions, key_mask,
             key_limit, training=None, return_attention=False):
        """Query row q sees input j iff `key_mask[b, j]` and
        `j <= key_limit[b, q]`. With `return_attention`, also the attention
        weights (see `PerceiverARAttention.attend`)."""
        normed = self.query_norm(query)
        attended = self.attention(
            normed, self.key_input(inputs, normed), query_positions,
            key_positions, key_mask=key_mask, key_limit=key_limit,
            training=training, return_attention=return_attention,
        )
        return then(attended, return_attention,
                    lambda a: self.finish(query, a))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_query_residual": self.use_query_residual,
                "latents_in_keys": self.latents_in_keys,
                # Kept by the attention layer, which uses them.
                "attention_implementation":
                    self.attention.attention_implementation,
                "key_value_chunk_size": self.attention.key_value_chunk_size,
                "remat": self.attention.remat,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARSelfAttentionBlock(_Block):
    """`x += Attn(LN(x)); x += MLP(x)` over the latents."""

    def build(self, input_shape, *args, **kwargs):
        self.attention_norm = self._norm("attention_norm")
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape)
        self.mlp.build(input_shape)
        self.built = True

    def call(self, x, positions, mask, training=None,
             return_attention=False):
        """With `return_attention`, also the attention weights."""
        normed = self.attention_norm(x)
        attended = self.attention(normed, normed, positions, positions, mask,
                                  training=training,
                                  return_attention=return_attention)
        return then(attended, return_attention, lambda a: self.mlp(x + a))


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARTokenEmbedding(keras.layers.Embedding):
    """Token embedding that also gives tied logits: `layer(ids)` embeds,
    `layer(hidden, reverse=True)` is `hidden @ embeddings.T (+ bias)`
    (krasserm's output adapter), so a functional graph can call both.

    Args:
        use_logits_bias: a `[vocabulary]` bias on the reverse logits.
        (the rest as `keras.layers.Embedding`)
    """

    def __init__(self, input_dim, output_dim, use_logits_bias=False,
                 **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.use_logits_bias = use_logits_bias

    def build(self, input_shape=None):
        super().build(input_shape)
        self.logits_bias = None
        if self.use_logits_bias:
            self.logits_bias = self.add_weight(
                shape=(self.input_dim,), name="logits_bias",
                initializer="zeros",
            )

    @property
    def variable_serialization_spec(self):
        # Embedding saves the variables its spec names; add the bias.
        spec = super().variable_serialization_spec
        if not self.use_logits_bias:
            return spec
        return {mode: list(names) + ["logits_bias"]
                for mode, names in spec.items()}

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs)
        embeddings = ops.cast(self.embeddings, inputs.dtype)
        logits = ops.matmul(inputs, ops.transpose(embeddings))
        if self.logits_bias is not None:
            logits = logits + ops.cast(self.logits_bias, logits.dtype)
        return logits

    def compute_output_spec(self, inputs, reverse=False):
        if not reverse:
            return super().compute_output_spec(inputs)
        return keras.KerasTensor(tuple(inputs.shape[:-1]) + (self.input_dim,),
                                 dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["use_logits_bias"] = self.use_logits_bias
        return config
