"""Multi-head attention as the Perceiver defines it.

Queries and keys/values may have different widths, and the query/key and
value projections may have different channel counts (Perceiver IO's
`qk_channels` and `v_channels`). Numerics follow DeepMind's `attend`:
logits scaled by `1/sqrt(qk_channels / num_heads)`, masked logits replaced by
a large negative number, and a query row whose keys are all masked yields
zeros before the output projection instead of a uniform average.

Three implementations give the same numbers (see `chunked_attention`):
"plain" materialises the `[B, H, Q, K]` scores, "chunked" streams over
key/value chunks with an online softmax, "fused" calls
`keras.ops.dot_product_attention`; "auto" chooses by size and device.
"""

import math

import keras
from keras import ops

from perceiver_keras.layers.chunked_attention import default_chunk_size
from perceiver_keras.layers.chunked_attention import fused_attend
from perceiver_keras.layers.chunked_attention import record_attention_call
from perceiver_keras.layers.chunked_attention import resolve_implementation
from perceiver_keras.layers.chunked_attention import streamed_attention_weights
from perceiver_keras.layers.chunked_attention import streaming_attend
from perceiver_keras.layers.chunked_attention import validate_implementation
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.dense import einsum
from perceiver_keras.layers.utils import ConfigArgumentsMixin
from perceiver_keras.layers.utils import clone_initializer


def attention_mask_from(query_mask, key_mask, num_queries, num_keys):
    """Combines boolean `[B, Q]` and `[B, K]` masks into `[B, Q, K]`.

    Masks over an index grid (`[B, d1, .., dk]`) are flattened first.
    Returns None when both masks are None.
    """
    if query_mask is None and key_mask is None:
        return None
    if query_mask is not None:
        query_mask = ops.reshape(ops.cast(query_mask, "bool"), (-1, num_queries))
    if key_mask is not None:
        key_mask = ops.reshape(ops.cast(key_mask, "bool"), (-1, num_keys))
    if query_mask is None:
        return ops.repeat(ops.expand_dims(key_mask, 1), num_queries, axis=1)
    if key_mask is None:
        return ops.repeat(ops.expand_dims(query_mask, 2), num_keys, axis=2)
    return ops.logical_and(
        ops.expand_dims(query_mask, 2), ops.expand_dims(key_mask, 1)
    )


def attention_weights_spec(num_heads, query, key_value):
    """The `KerasTensor` of `[B, heads, Q, K]` weights for these inputs."""
    shape = (query.shape[0], num_heads, query.shape[1], key_value.shape[1])
    return keras.KerasTensor(shape, dtype="float32")


def attention_probabilities(q, k, mask=None):
    """Float32 softmax(q k^T / sqrt(Dqk)) `[B, H, Q, K]`, masked logits
    -1e30 (a row with no allowed key is the uniform average)."""
    head_dim = ops.shape(q)[-1]
    # Softmax in float32 so half-precision policies stay stable.
    logits = ops.cast(einsum("bqhd,bkhd->bhqk", q, k, True), "float32")
    logits = logits * (1.0 / math.sqrt(head_dim))
    if mask is not None:
        mask = ops.expand_dims(ops.cast(mask, "bool"), 1)
        logits = ops.where(mask, logits, ops.cast(-1e30, "float32"))
    return ops.softmax(logits, axis=-1)


def wipe_rows_without_keys(weights, mask):
    """Zeros for the query rows of `[B, H, Q, K]` weights whose `[B, Q, K]`
    mask allows no key: the weights the wiped output was made with."""
    if mask is None:
        return weights
    any_key = ops.any(ops.cast(mask, "bool"), axis=-1)[:, None, :, None]
    return ops.where(any_key, weights, ops.zeros_like(weights))


def attend(q, k, v, mask=None, wipe_fully_masked_rows=True, dropout=None,
           return_weights=False):
    """Scaled dot-product attention on split heads.

    Args:
        q: `[B, Q, H, Dqk]`; k: `[B, K, H, Dqk]`; v: `[B, K, H, Dv]`.
        mask: optional boolean `[B, Q, K]`, True where attention is allowed.
        wipe_fully_masked_rows: output zeros for query rows with no allowed
            key (DeepMind) instead of the uniform average softmax gives.
        dropout: optional callable applied to the attention probabilities.
        return_weights: also return the float32 `[B, H, Q, K]` attention
            weights (before dropout; zero rows where the output is wiped).

    Returns:
        `[B, Q, H * Dv]` (and the weights when `return_weights`).
    """
    probabilities = attention_probabilities(q, k, mask)
    weights = ops.cast(probabilities, v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    out = einsum("bhqk,bkhd->bqhd", weights, v)
    batch, num_queries = ops.shape(q)[0], ops.shape(q)[1]
    out = ops.reshape(out, (batch, num_queries, -1))
    if mask is not None and wipe_fully_masked_rows:
        any_key = ops.any(ops.cast(mask, "bool"), axis=-1, keepdims=True)
        out = ops.where(any_key, out, ops.zeros_like(out))
    if not return_weights:
        return out
    if wipe_fully_masked_rows:
        probabilities = wipe_rows_without_keys(probabilities, mask)
    return out, probabilities


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverAttention(ConfigArgumentsMixin, keras.layers.Layer):
    """Multi-head attention with separate query/key and value channel counts.

    Args:
        num_heads: number of heads; `qk_channels` and `v_channels` must be
            divisible by it.
        qk_channels: width of the query and key projections. Defaults to the
            key/value input width.
        v_channels: width of the value projection. Defaults to `qk_channels`.
        output_channels: width of the output projection. Defaults to the
            query input width.
        attention_dropout: dropout rate on the attention probabilities.
        wipe_fully_masked_rows: see `attend`.
        attention_implementation: "auto" (plain while the scores of one
            example fit in `PLAIN_MAX_SCORES`, else fused on a GPU kernel
            that streams, else chunked), "plain", "chunked" or "fused".
        key_value_chunk_size: keys per chunk of the chunked path; None picks
            about `CHUNK_SCORES / (heads * queries)`.
        remat: in the chunked path, recompute each chunk in the backward
            pass rather than storing its scores.

    Call arguments:
        query: `[B, Q, Cq]`. key_value: `[B, K, Ckv]`.
        query_mask: optional bool `[B, Q]`. key_mask: optional bool `[B, K]`.
        key_value_norm: optional callable applied to the key/value input
            before the key and value projections (per chunk when chunked).
    """

    config_arguments = (
        "num_heads", "qk_channels", "v_channels", "output_channels",
        "attention_dropout", "wipe_fully_masked_rows", "kernel_initializer",
        "attention_implementation", "key_value_chunk_size", "remat",
    )
    initializer_arguments = ("kernel_initializer",)

    def __init__(
        self,
        num_heads=1,
        qk_channels=None,
        v_channels=None,
        output_channels=None,
        attention_dropout=0.0,
        wipe_fully_masked_rows=True,
        kernel_initializer="lecun_normal",
        attention_implementation="auto",
        key_value_chunk_size=None,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_implementation(
            attention_implementation, key_value_chunk_size, attention_dropout
        )
        self._store_config(locals())
        self.supports_masking = False

    def _dense(self, units, name):
        return PerceiverDense(
            units,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, key_value_shape=None):
        key_value_shape = key_value_shape or query_shape
        q_dim, kv_dim = query_shape[-1], key_value_shape[-1]
        self.resolved_qk_channels = self.qk_channels or kv_dim
        self.resolved_v_channels = self.v_channels or self.resolved_qk_channels
        self.resolved_output_channels = self.output_channels or q_dim
        for name, channels in (
            ("qk_channels", self.resolved_qk_channels),
            ("v_channels", self.resolved_v_channels),
        ):
            if channels % self.num_heads:
                raise ValueError(
                    f"`{name}` must be divisible by `num_heads`="
                    f"{self.num_heads}. Received: {name}={channels}."
                )
        self.query_dense = self._dense(self.resolved_qk_channels, "query")
        self.key_dense = self._dense(self.resolved_qk_channels, "key")
        self.value_dense = self._dense(self.resolved_v_channels, "value")
        self.output_dense = self._dense(
            self.resolved_output_channels, "output"
        )
        self.query_dense.build(query_shape)
        self.key_dense.build(key_value_shape)
        self.value_dense.build(key_value_shape)
        self.output_dense.build(
            tuple(query_shape[:-1]) + (self.resolved_v_channels,)
        )
        self.dropout_layer = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy
        )
        self.built = True

    def _split_heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(
            x, (shape[0], shape[1], self.num_heads, shape[2] // self.num_heads)
        )

    def implementation_for(self, num_queries, num_keys, training=None):
        """The path a call with these sizes takes ("auto" resolved)."""
        return resolve_implementation(
            self.attention_implementation,
            self.num_heads,
            num_queries,
            num_keys,
            dropout_active=bool(training) and self.attention_dropout > 0,
            compute_dtype=self.compute_dtype,
        )

    def _project_key_value(self, key_value, key_value_norm):
        if key_value_norm is not None:
            key_value = key_value_norm(key_value)
        k = self._split_heads(self.key_dense(key_value))
        v = self._split_heads(self.value_dense(key_value))
        return k, v

    def _project_chunk(self, chunk, key_value_norm, values=True):
        """`_project_key_value` on a 2-D view of one chunk: TensorFlow cannot
        differentiate a 3-D Dense (tensordot's transposes) inside an
        XLA-compiled loop. `values=False`: the keys only."""
        batch, length = ops.shape(chunk)[0], ops.shape(chunk)[1]
        flat = ops.reshape(chunk, (-1, chunk.shape[-1]))
        if key_value_norm is not None:
            flat = key_value_norm(flat)
        heads = self.num_heads
        k = ops.reshape(
            self.key_dense(flat),
            (batch, length, heads, self.resolved_qk_channels // heads),
        )
        if not values:
            return k
        v = ops.reshape(
            self.value_dense(flat),
            (batch, length, heads, self.resolved_v_channels // heads),
        )
        return k, v

    def call(
        self,
        query,
        key_value=None,
        query_mask=None,
        key_mask=None,
        training=None,
        key_value_norm=None,
        return_attention=False,
    ):
        """With `return_attention`, returns `(output, weights)`: the float32
        `[B, heads, Q, K]` attention weights (before dropout; zero rows
        where a fully masked row's output is wiped), from whichever path
        runs; the output is what the call gives without it."""
        key_value = query if key_value is None else key_value
        implementation = self.implementation_for(
            query.shape[1], key_value.shape[1], training
        )
        record_attention_call(
            implementation, self.num_heads, query, key_value
        )
        q = self._split_heads(self.query_dense(query))
        if implementation == "chunked":
            active = bool(training) and self.attention_dropout > 0
            chunk_size = self.key_value_chunk_size or default_chunk_size(
                self.num_heads, query.shape[1]
            )
            out = streaming_attend(
                q,
                key_value,
                lambda kv: self._project_chunk(kv, key_value_norm),
                self.resolved_v_channels // self.num_heads,
                chunk_size,
                query_mask=query_mask,
                key_mask=key_mask,
                wipe_fully_masked_rows=self.wipe_fully_masked_rows,
                dropout_rate=self.attention_dropout if active else 0.0,
                dropout_seed=(
                    self.dropout_layer.seed_generator.next() if active
                    else None
                ),
                remat=self.remat and not return_attention,
                variables=self.key_dense.weights
                + self.value_dense.weights
                + list(getattr(key_value_norm, "weights", [])),
                return_statistics=return_attention,
            )
            if not return_attention:
                return self.output_dense(out)
            out, statistics = out
            # A second pass over the chunks, for this layer only.
            weights = streamed_attention_weights(
                q,
                key_value,
                lambda kv: self._project_chunk(kv, key_value_norm, False),
                chunk_size,
                statistics,
                query_mask=query_mask,
                key_mask=key_mask,
                wipe_fully_masked_rows=self.wipe_fully_masked_rows,
            )
            return self.output_dense(out), weights
        k, v = self._project_key_value(key_value, key_value_norm)
        mask = None
        if return_attention or implementation != "fused":
            mask = attention_mask_from(
                query_mask, key_mask, ops.shape(q)[1], ops.shape(k)[1]
            )
        if implementation == "fused":
            out = fused_attend(
                q, k, v, query_mask, key_mask, self.wipe_fully_masked_rows
            )
            out = self.output_dense(out)
            if not return_attention:
                return out
            # The kernel keeps its weights to itself: compute them here.
            weights = attention_probabilities(q, k, mask)
            if self.wipe_fully_masked_rows:
                weights = wipe_rows_without_keys(weights, mask)
            return out, weights
        dropout = None
        if self.attention_dropout > 0:
            dropout = lambda w: self.dropout_layer(w, training=training)
        out = attend(
            q, k, v, mask, self.wipe_fully_masked_rows, dropout,
            return_weights=return_attention,
        )
        if return_attention:
            out, weights = out
            return self.output_dense(out), weights
        return self.output_dense(out)

    def compute_output_spec(self, query, key_value=None, *args,
                            return_attention=False, **kwargs):
        out = super().compute_output_spec(query, key_value, *args, **kwargs)
        if not return_attention:
            return out
        key_value = query if key_value is None else key_value
        return out, attention_weights_spec(self.num_heads, query, key_value)

    def compute_output_shape(self, query_shape, key_value_shape=None):
        channels = self.output_channels or query_shape[-1]
        return tuple(query_shape[:-1]) + (channels,)
