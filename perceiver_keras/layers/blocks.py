"""The two Perceiver transformer blocks: cross-attention and self-attention.

Both are pre-LayerNorm (epsilon 1e-5) with an MLP of one hidden layer:
    cross: x = [q +] Attn(LN(q), LN(kv));  x = x + MLP(LN(x))
    self:  x = x + Attn(LN(x));            x = x + MLP(LN(x))

With `remat=True` a block is recomputed in the backward pass instead of
storing its activations; a chunked cross-attention instead recomputes chunk
by chunk (recomputing the whole loop would double its cost).
"""

import keras

from perceiver_keras.layers.attention import PerceiverAttention
from perceiver_keras.layers.attention import attention_weights_spec
from perceiver_keras.layers.chunked_attention import validate_implementation
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.utils import ConfigArgumentsMixin
from perceiver_keras.layers.utils import apply_dropout
from perceiver_keras.layers.utils import clone_initializer
from perceiver_keras.layers.utils import gelu
from perceiver_keras.layers.utils import layer_norm


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMLP(ConfigArgumentsMixin, keras.layers.Layer):
    """Dense(widening_factor * C) -> GELU -> Dense(C)."""

    config_arguments = (
        "widening_factor", "gelu_approximate", "kernel_initializer",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        widening_factor=1,
        gelu_approximate=True,
        kernel_initializer="lecun_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._store_config(locals())

    def build(self, input_shape):
        channels = input_shape[-1]
        self.hidden_dense = PerceiverDense(
            self.widening_factor * channels,
            activation=gelu(self.gelu_approximate),
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.output_dense = PerceiverDense(
            channels,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="output",
        )
        self.hidden_dense.build(input_shape)
        self.output_dense.build(
            tuple(input_shape[:-1]) + (self.widening_factor * channels,)
        )
        self.built = True

    def call(self, x):
        return self.output_dense(self.hidden_dense(x))

    def compute_output_shape(self, input_shape):
        return input_shape


# The attention options a block hands on to its `PerceiverAttention`.
ATTENTION_OPTIONS = (
    "num_heads", "qk_channels", "v_channels", "attention_dropout",
    "wipe_fully_masked_rows", "attention_implementation",
    "key_value_chunk_size", "remat",
)


class _Block(ConfigArgumentsMixin, keras.layers.Layer):
    """What both blocks share: attention options, MLP, dropout, config.

    `attention_implementation`, `key_value_chunk_size`: see
    `PerceiverAttention`. `remat`: gradient checkpointing (see above).
    """

    config_arguments = (
        "num_heads", "qk_channels", "v_channels", "widening_factor",
        "dropout", "attention_dropout", "gelu_approximate",
        "wipe_fully_masked_rows", "kernel_initializer",
        "attention_implementation", "key_value_chunk_size", "remat",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        num_heads=1,
        qk_channels=None,
        v_channels=None,
        widening_factor=1,
        dropout=0.0,
        attention_dropout=0.0,
        gelu_approximate=True,
        wipe_fully_masked_rows=True,
        kernel_initializer="lecun_normal",
        attention_implementation="auto",
        key_value_chunk_size=None,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if remat and (dropout > 0 or attention_dropout > 0):
            # Recomputation would redraw the dropout masks.
            raise ValueError(
                "`remat=True` needs dropout=0 and attention_dropout=0. "
                f"Received: dropout={dropout}, "
                f"attention_dropout={attention_dropout}."
            )
        validate_implementation(
            attention_implementation, key_value_chunk_size, attention_dropout
        )
        self._store_config(locals())

    def _build_attention_and_mlp(self, query_shape, key_value_shape):
        self.attention = PerceiverAttention(
            **{name: getattr(self, name) for name in ATTENTION_OPTIONS},
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(query_shape, key_value_shape)
        self.mlp_norm = layer_norm("mlp_norm", self.dtype_policy)
        self.mlp_norm.build(query_shape)
        self.mlp = PerceiverMLP(
            widening_factor=self.widening_factor,
            gelu_approximate=self.gelu_approximate,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="mlp",
        )
        self.mlp.build(query_shape)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )

    def _add_mlp(self, x, training):
        mlp_out = self.mlp(self.mlp_norm(x))
        return x + apply_dropout(self.dropout_layer, mlp_out, training)

    def _maybe_remat(self, forward, *tensors, chunked=False):
        """`forward(*tensors)`, rematerialised when `remat` (not when
        `chunked`, nor when attention weights are returned: inference).

        Whatever needs a gradient is passed, not closed over: TensorFlow's
        recompute_grad differentiates only arguments and variables (and
        takes tensors only, so masks and flags are closed over).
        """
        if self.remat and not chunked:
            return keras.remat(forward)(*tensors)
        return forward(*tensors)

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return query_shape


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverCrossAttentionBlock(_Block):
    """Queries attend to a key/value array; output width = query width.

    Args (beyond the attention options):
        use_query_residual: add the (un-normalised) query to the attention
            output. DeepMind's learned-position ImageNet decoder sets False.

    Call arguments:
        query: `[B, Q, Cq]`; key_value: `[B, K, Ckv]`;
        query_mask: optional bool `[B, Q]`; key_mask: optional bool `[B, K]`.
    """

    def __init__(self, use_query_residual=True, **kwargs):
        super().__init__(**kwargs)
        self.use_query_residual = use_query_residual

    def build(self, query_shape, key_value_shape):
        self.query_norm = layer_norm("query_norm", self.dtype_policy)
        self.query_norm.build(query_shape)
        self.key_value_norm = layer_norm("key_value_norm", self.dtype_policy)
        self.key_value_norm.build(key_value_shape)
        self._build_attention_and_mlp(query_shape, key_value_shape)
        self.built = True

    def call(
        self, query, key_value, query_mask=None, key_mask=None, training=None,
        return_attention=False,
    ):
        """With `return_attention`, returns `(output, weights)`, the weights
        `[B, heads, Q, K]` as `PerceiverAttention` gives them."""

        def forward(query, key_value):
            # The key/value LayerNorm runs inside the attention, chunk by
            # chunk when chunked: no normalised copy of a long input.
            attended = self.attention(
                self.query_norm(query),
                key_value,
                query_mask=query_mask,
                key_mask=key_mask,
                training=training,
                key_value_norm=self.key_value_norm,
                return_attention=return_attention,
            )
            if return_attention:
                attended, weights = attended
            attended = apply_dropout(self.dropout_layer, attended, training)
            x = query + attended if self.use_query_residual else attended
            x = self._add_mlp(x, training)
            return (x, weights) if return_attention else x

        implementation = self.attention.implementation_for(
            query.shape[1], key_value.shape[1], training
        )
        return self._maybe_remat(
            forward, query, key_value,
            chunked=implementation == "chunked" or return_attention,
        )

    def compute_output_spec(self, query, key_value, *args,
                            return_attention=False, **kwargs):
        out = super().compute_output_spec(query, key_value, *args, **kwargs)
        if not return_attention:
            return out
        return out, attention_weights_spec(self.num_heads, query, key_value)

    def get_config(self):
        config = super().get_config()
        config["use_query_residual"] = self.use_query_residual
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverSelfAttentionBlock(_Block):
    """Pre-LayerNorm transformer layer on the latent array.

    Call arguments:
        x: `[B, N, C]`; padding_mask: optional bool `[B, N]`.
    """

    def build(self, input_shape):
        self.attention_norm = layer_norm("attention_norm", self.dtype_policy)
        self.attention_norm.build(input_shape)
        self._build_attention_and_mlp(input_shape, input_shape)
        self.built = True

    def call(self, x, padding_mask=None, training=None,
             return_attention=False):
        """With `return_attention`, returns `(output, weights)`, the weights
        `[B, heads, N, N]` as `PerceiverAttention` gives them."""

        def forward(x):
            normed = self.attention_norm(x)
            attended = self.attention(
                normed,
                normed,
                query_mask=padding_mask,
                key_mask=padding_mask,
                training=training,
                return_attention=return_attention,
            )
            if return_attention:
                attended, weights = attended
            x = x + apply_dropout(self.dropout_layer, attended, training)
            x = self._add_mlp(x, training)
            return (x, weights) if return_attention else x

        implementation = self.attention.implementation_for(
            x.shape[1], x.shape[1], training
        )
        return self._maybe_remat(
            forward, x,
            chunked=implementation == "chunked" or return_attention,
        )

    def compute_output_spec(self, x, *args, return_attention=False,
                            **kwargs):
        out = super().compute_output_spec(x, *args, **kwargs)
        if not return_attention:
            return out
        return out, attention_weights_spec(self.num_heads, x, x)
