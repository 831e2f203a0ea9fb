"""The Perceiver Resampler: a fixed number of latents read a feature set.

Flamingo (Alayrac et al. 2022) connects a vision encoder to a language
model with a Perceiver: `num_latents` learned latents cross-attend to any
number of visual features and come out as a fixed-size set of tokens. Its
descendants differ only in details, all options here:

| | Flamingo / OpenFlamingo | IDEFICS | Idefics2 |
|---|---|---|---|
| norms | LayerNorm (eps 1e-5) | LayerNorm (eps 1e-5) | RMSNorm (eps 1e-6, config) |
| q/k norms | none | optional per-head LayerNorm | none |
| key/value heads | = heads | = heads | fewer (grouped-query) |
| MLP | GELU (exact) | ReLU | gated SiLU |
| media/frame embeddings | optional | none | none |
| padding mask | none | none | over the features |

Shared by all (and therefore fixed here): each block is
`latents += Attn(q=N(latents), kv=[N(features); N(latents)])` then
`latents += MLP(N(latents))`, with separate norms for features and latents;
keys and values are the normalised features *concatenated with the
normalised latents*; projections have no bias; logits are scaled by
`1/sqrt(head_dim)`; a final norm follows the last block. The latents are
always attended, so no query row is ever fully masked.

`RESAMPLER_VARIANTS` holds the options of each published variant;
`PerceiverResampler.from_variant(name, ...)` builds one.
"""

import keras
from keras import ops

from perceiver_keras.layers.attention import attend
from perceiver_keras.layers.attention import attention_mask_from
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.utils import ConfigArgumentsMixin
from perceiver_keras.layers.utils import clone_initializer

RESAMPLER_VARIANTS = {
    # lucidrains' flamingo-pytorch / OpenFlamingo `PerceiverResampler`.
    "flamingo": {
        "norm": "layer_norm", "norm_epsilon": 1e-5,
        "mlp_activation": "gelu", "gated_mlp": False,
        "latents_initializer": {
            "class_name": "RandomNormal", "config": {"stddev": 1.0}
        },
    },
    # transformers' `IdeficsPerceiverResampler` (qk_norm from the config's
    # `qk_layer_norms_perceiver`).
    "idefics": {
        "norm": "layer_norm", "norm_epsilon": 1e-5,
        "mlp_activation": "relu", "gated_mlp": False,
        "latents_initializer": {
            "class_name": "RandomNormal", "config": {"stddev": 1.0}
        },
    },
    # transformers' `Idefics2PerceiverResampler`.
    "idefics2": {
        "norm": "rms_norm", "norm_epsilon": 1e-6,
        "mlp_activation": "silu", "gated_mlp": True,
        "latents_initializer": "ones",
    },
}

NORMS = ("layer_norm", "rms_norm")

# The options a `PerceiverResampler` hands on to each of its blocks as given.
BLOCK_OPTIONS = (
    "num_key_value_heads", "norm", "norm_epsilon", "qk_norm",
    "qk_norm_epsilon", "mlp_activation", "gated_mlp",
)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class RMSNorm(keras.layers.Layer):
    """`x / sqrt(mean(x^2) + eps) * scale`, computed in float32 (as Llama's
    and Idefics2's `RMSNorm`, which keras' fused op may not reproduce)."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="ones"
        )
        self.built = True

    def call(self, x):
        x32 = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x32), axis=-1, keepdims=True)
        normed = ops.cast(x32 * ops.rsqrt(variance + self.epsilon), x.dtype)
        return normed * ops.cast(self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def check_key_value_heads(num_heads, num_key_value_heads):
    if (
        not isinstance(num_key_value_heads, int) or num_key_value_heads < 1
        or num_heads % num_key_value_heads
    ):
        raise ValueError(
            "`num_key_value_heads` must be a positive divisor of `num_heads`. "
            f"Received: num_heads={num_heads}, "
            f"num_key_value_heads={num_key_value_heads!r}."
        )


def bias_free_dense(layer, units, name):
    """A bias-free Dense under `layer`'s dtype policy, with a fresh copy of
    its `kernel_initializer` (every projection of the resampler)."""
    return PerceiverDense(
        units, use_bias=False, dtype=layer.dtype_policy, name=name,
        kernel_initializer=clone_initializer(layer.kernel_initializer),
    )


def make_norm(kind, epsilon, dtype, name):
    if kind == "rms_norm":
        return RMSNorm(epsilon=epsilon, dtype=dtype, name=name)
    return keras.layers.LayerNormalization(
        epsilon=epsilon, dtype=dtype, name=name
    )


@keras.saving.register_keras_serializable(package="perceiver_keras")
class ResamplerAttention(ConfigArgumentsMixin, keras.layers.Layer):
    """Latents attend to `[features; latents]`, bias-free projections.

    Args:
        num_heads: query heads.
        head_dim: channels per head.
        num_key_value_heads: key/value heads (grouped-query attention: query
            head `h` reads key/value head `h // (num_heads / kv_heads)`, as
            transformers' `repeat_kv`). Defaults to `num_heads`.
        qk_norm: LayerNorm over each head's channels of queries and keys
            (IDEFICS' `qk_layer_norms_perceiver`), eps `qk_norm_epsilon`.

    Call arguments:
        latents: `[B, N, D]` (normalised). features: `[B, M, D]`
        (normalised). feature_mask: optional bool `[B, M]`, True = real.
    """

    config_arguments = (
        "num_heads", "head_dim", "num_key_value_heads", "qk_norm",
        "qk_norm_epsilon", "kernel_initializer",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        num_heads,
        head_dim,
        num_key_value_heads=None,
        qk_norm=False,
        qk_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_key_value_heads = num_key_value_heads or num_heads
        check_key_value_heads(num_heads, num_key_value_heads)
        self._store_config(locals())

    def build(self, latents_shape, features_shape=None):
        width = latents_shape[-1]
        inner = self.num_heads * self.head_dim
        kv_inner = self.num_key_value_heads * self.head_dim
        self.query_dense = bias_free_dense(self, inner, "query")
        self.key_dense = bias_free_dense(self, kv_inner, "key")
        self.value_dense = bias_free_dense(self, kv_inner, "value")
        self.output_dense = bias_free_dense(self, width, "output")
        for dense in (self.query_dense, self.key_dense, self.value_dense):
            dense.build((None, None, width))
        self.output_dense.build((None, None, inner))
        if self.qk_norm:
            self.query_norm = make_norm(
                "layer_norm", self.qk_norm_epsilon, self.dtype_policy,
                "query_norm",
            )
            self.key_norm = make_norm(
                "layer_norm", self.qk_norm_epsilon, self.dtype_policy,
                "key_norm",
            )
            self.query_norm.build((None, None, None, self.head_dim))
            self.key_norm.build((None, None, None, self.head_dim))
        self.built = True

    def _split_heads(self, x, heads):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], heads, self.head_dim))

    def call(self, latents, features, feature_mask=None,
             return_attention=False):
        """With `return_attention`, returns `(output, weights)`: float32
        `[B, heads, N, M + N]` over the keys `[features; latents]`."""
        key_value = ops.concatenate([features, latents], axis=1)
        q = self._split_heads(self.query_dense(latents), self.num_heads)
        k = self._split_heads(
            self.key_dense(key_value), self.num_key_value_heads
        )
        v = self._split_heads(
            self.value_dense(key_value), self.num_key_value_heads
        )
        if self.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        groups = self.num_heads // self.num_key_value_heads
        if groups > 1:
            k = ops.repeat(k, groups, axis=2)
            v = ops.repeat(v, groups, axis=2)
        mask = None
        if feature_mask is not None:
            latent_mask = ops.ones_like(latents[:, :, 0], dtype="bool")
            key_mask = ops.concatenate(
                [ops.cast(feature_mask, "bool"), latent_mask], axis=1
            )
            mask = attention_mask_from(
                None, key_mask, ops.shape(q)[1], ops.shape(k)[1]
            )
        out = attend(q, k, v, mask, wipe_fully_masked_rows=False,
                     return_weights=return_attention)
        if return_attention:
            out, weights = out
            return self.output_dense(out), weights
        return self.output_dense(out)

    def compute_output_shape(self, latents_shape, features_shape=None):
        return latents_shape


@keras.saving.register_keras_serializable(package="perceiver_keras")
class ResamplerMLP(ConfigArgumentsMixin, keras.layers.Layer):
    """Bias-free MLP: `out(act(hidden(x)))`, or gated
    `out(act(gate(x)) * hidden(x))` (Idefics2's `gate_proj`/`up_proj`)."""

    config_arguments = (
        "intermediate_dim", "activation", "gated", "kernel_initializer",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        intermediate_dim,
        activation="gelu",
        gated=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._store_config(locals())
        self.activation_fn = keras.activations.get(activation)

    def build(self, input_shape):
        width = input_shape[-1]
        self.hidden_dense = bias_free_dense(
            self, self.intermediate_dim, "hidden"
        )
        self.hidden_dense.build((None, None, width))
        if self.gated:
            self.gate_dense = bias_free_dense(
                self, self.intermediate_dim, "gate"
            )
            self.gate_dense.build((None, None, width))
        self.output_dense = bias_free_dense(self, width, "output")
        self.output_dense.build((None, None, self.intermediate_dim))
        self.built = True

    def call(self, x):
        if self.gated:
            h = self.activation_fn(self.gate_dense(x)) * self.hidden_dense(x)
        else:
            h = self.activation_fn(self.hidden_dense(x))
        return self.output_dense(h)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverResamplerBlock(ConfigArgumentsMixin, keras.layers.Layer):
    """One resampler block: pre-norm cross-attention, then pre-norm MLP."""

    config_arguments = (
        "num_heads", "head_dim", "intermediate_dim", *BLOCK_OPTIONS,
        "kernel_initializer",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        num_heads,
        head_dim,
        intermediate_dim,
        num_key_value_heads=None,
        norm="layer_norm",
        norm_epsilon=1e-5,
        qk_norm=False,
        qk_norm_epsilon=1e-5,
        mlp_activation="gelu",
        gated_mlp=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._store_config(locals())

    def build(self, latents_shape, features_shape=None):
        def norm(name):
            layer = make_norm(
                self.norm, self.norm_epsilon, self.dtype_policy, name
            )
            layer.build(latents_shape)
            return layer

        self.features_norm = norm("features_norm")
        self.latents_norm = norm("latents_norm")
        self.mlp_norm = norm("mlp_norm")
        self.attention = ResamplerAttention(
            self.num_heads, self.head_dim, self.num_key_value_heads,
            qk_norm=self.qk_norm, qk_norm_epsilon=self.qk_norm_epsilon,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy, name="attention",
        )
        self.attention.build(latents_shape, latents_shape)
        self.mlp = ResamplerMLP(
            self.intermediate_dim, self.mlp_activation, self.gated_mlp,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy, name="mlp",
        )
        self.mlp.build(latents_shape)
        self.built = True

    def call(self, latents, features, feature_mask=None,
             return_attention=False):
        """With `return_attention`, returns `(latents, weights)` (see
        `ResamplerAttention`)."""
        attended = self.attention(
            self.latents_norm(latents), self.features_norm(features),
            feature_mask=feature_mask, return_attention=return_attention,
        )
        if return_attention:
            attended, weights = attended
        latents = latents + attended
        latents = latents + self.mlp(self.mlp_norm(latents))
        return (latents, weights) if return_attention else latents

    def compute_output_shape(self, latents_shape, features_shape=None):
        return latents_shape


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverResampler(ConfigArgumentsMixin, keras.layers.Layer):
    """`num_latents` learned latents resample a feature set of any size.

    Args:
        num_latents: number of output tokens N.
        num_layers: number of blocks (transformers' `resampler_depth`).
        num_heads: attention heads.
        head_dim: channels per head (the attention's inner width is
            `num_heads * head_dim`, independent of the feature width).
        num_key_value_heads: key/value heads for grouped-query attention
            (Idefics2). Defaults to `num_heads`.
        intermediate_dim: MLP hidden width. Defaults to 4 x feature width.
        norm: "layer_norm" or "rms_norm".
        norm_epsilon: epsilon of every norm (not the q/k norms).
        qk_norm, qk_norm_epsilon: per-head LayerNorm of queries and keys.
        mlp_activation: activation name (keras; "gelu" is the exact erf).
        gated_mlp: gated MLP `out(act(gate(x)) * up(x))`.
        max_num_media: Flamingo's media time embeddings (one learned vector
            per image/clip index T), None for none.
        max_num_frames: Flamingo's frame embeddings (one per frame index F),
            None for none.
        latents_initializer, kernel_initializer: initializers.

    Call arguments:
        features: `[B, M, C]`, or Flamingo's media layout `[B, T, F, V, C]`
            (T images or clips of F frames of V features each; frame
            embeddings are added per frame, the F*V features of a medium
            are resampled together, time embeddings added per medium).
            A `[B, M, C]` input is one medium of one frame.
        padding_mask: optional `[B, M]` (or `[B, T, F, V]`), True/1 where a
            feature is real; padded features are not attended.

    Returns:
        `[B, N, C]`, or `[B, T, N, C]` for media input.
    """

    config_arguments = (
        "num_latents", "num_layers", "num_heads", "head_dim",
        "intermediate_dim", *BLOCK_OPTIONS, "max_num_media",
        "max_num_frames", "latents_initializer", "kernel_initializer",
    )
    initializer_arguments = ("latents_initializer", "kernel_initializer")

    def __init__(
        self,
        num_latents,
        num_layers,
        num_heads,
        head_dim,
        num_key_value_heads=None,
        intermediate_dim=None,
        norm="layer_norm",
        norm_epsilon=1e-5,
        qk_norm=False,
        qk_norm_epsilon=1e-5,
        mlp_activation="gelu",
        gated_mlp=False,
        max_num_media=None,
        max_num_frames=None,
        latents_initializer="random_normal",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(
                f"`norm` must be one of {list(NORMS)}. Received: norm={norm!r}."
            )
        for name, value in (
            ("num_latents", num_latents), ("num_layers", num_layers),
            ("num_heads", num_heads), ("head_dim", head_dim),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: "
                    f"{name}={value!r}."
                )
        check_key_value_heads(num_heads, num_key_value_heads or num_heads)
        self._store_config(locals())

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A resampler with the options of a published variant
        ("flamingo", "idefics", "idefics2"); `kwargs` add or override."""
        if variant not in RESAMPLER_VARIANTS:
            raise ValueError(
                f"`variant` must be one of {list(RESAMPLER_VARIANTS)}. "
                f"Received: variant={variant!r}."
            )
        return cls(**{**RESAMPLER_VARIANTS[variant], **kwargs})

    def build(self, features_shape, padding_mask_shape=None):
        width = features_shape[-1]
        if width is None:
            raise ValueError(
                "`features` must have a known last axis (channels). "
                f"Received: features.shape={features_shape}."
            )
        self.latents = self.add_weight(
            name="latents", shape=(self.num_latents, width),
            initializer=clone_initializer(self.latents_initializer),
        )
        self.frame_embeddings = None
        if self.max_num_frames:
            self.frame_embeddings = self.add_weight(
                name="frame_embeddings", shape=(self.max_num_frames, width),
                initializer=clone_initializer(self.latents_initializer),
            )
        self.media_time_embeddings = None
        if self.max_num_media:
            self.media_time_embeddings = self.add_weight(
                name="media_time_embeddings",
                shape=(self.max_num_media, width),
                initializer=clone_initializer(self.latents_initializer),
            )
        latents_shape = (None, self.num_latents, width)
        self.blocks = []
        for i in range(self.num_layers):
            block = PerceiverResamplerBlock(
                self.num_heads, self.head_dim,
                self.intermediate_dim or 4 * width,
                **{name: getattr(self, name) for name in BLOCK_OPTIONS},
                kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy, name=f"block_{i}",
            )
            block.build(latents_shape, latents_shape)
            self.blocks.append(block)
        self.output_norm = make_norm(
            self.norm, self.norm_epsilon, self.dtype_policy, "output_norm"
        )
        self.output_norm.build(latents_shape)
        self.built = True

    def _check_rank(self, features):
        if len(features.shape) not in (3, 5):
            raise ValueError(
                "`features` must be [batch, features, channels] or "
                "[batch, media, frames, features, channels]. Received: "
                f"features.shape={tuple(features.shape)}."
            )

    def call(self, features, padding_mask=None, return_attention=False):
        """With `return_attention`, returns `(latents, weights)`: a list, one
        float32 `[B, heads, N, M + N]` per block (keys: the features, then
        the latents; media input: `[B, T, heads, N, F*V + N]`)."""
        self._check_rank(features)
        media = len(features.shape) == 5
        if not media:  # one medium of one frame
            features = features[:, None, None]
            if padding_mask is not None:
                padding_mask = padding_mask[:, None, None]
        shape = ops.shape(features)
        batch, num_media, num_frames = shape[0], shape[1], shape[2]
        width = features.shape[-1]
        if self.frame_embeddings is not None:
            frames = ops.cast(self.frame_embeddings[:num_frames], features.dtype)
            features = features + frames[:, None, :]
        features = ops.reshape(features, (batch, num_media, -1, width))
        if self.media_time_embeddings is not None:
            times = self.media_time_embeddings[:num_media]
            features = features + ops.cast(times, features.dtype)[:, None, :]
        features = ops.reshape(features, (batch * num_media, -1, width))
        if padding_mask is not None:
            padding_mask = ops.reshape(
                ops.cast(padding_mask, "bool"),
                (batch * num_media, ops.shape(features)[1]),
            )
        latents = ops.cast(self.latents, features.dtype)
        latents = ops.broadcast_to(
            latents[None], (batch * num_media, self.num_latents, width)
        )
        maps = []
        for block in self.blocks:
            latents = block(latents, features, feature_mask=padding_mask,
                            return_attention=return_attention)
            if return_attention:
                latents, weights = latents
                if media:
                    weights = ops.reshape(
                        weights, (batch, num_media) + tuple(weights.shape[1:])
                    )
                maps.append(weights)
        latents = self.output_norm(latents)
        if media:
            latents = ops.reshape(
                latents, (batch, num_media, self.num_latents, width)
            )
        return (latents, maps) if return_attention else latents

    def compute_output_shape(self, features_shape, padding_mask_shape=None):
        if len(features_shape) == 5:
            return (
                features_shape[0], features_shape[1], self.num_latents,
                features_shape[-1],
            )
        return (features_shape[0], self.num_latents, features_shape[-1])
