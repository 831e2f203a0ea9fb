"""Attention over many keys without the `[B, H, Q, K]` score tensor.

`streaming_attend` reads the key/value input in chunks and keeps, per query
row and head, a running maximum `m`, a running sum `l` of `exp(s - m)` and a
running weighted value sum `acc` (the online softmax). After the last chunk
`acc / l` equals the softmax-weighted average of the plain path, masked
logits included: a masked key has logit -1e30, exactly as in `attend`, so a
row whose keys are all masked ends as the uniform average (then wiped to
zeros, as DeepMind does). The key/value input is projected chunk by chunk,
so nothing of size `[B, M, ...]` exists beyond the input itself.

`fused_attend` hands the work to `keras.ops.dot_product_attention` (flash
attention where the backend has it), after making every query row attend
to at least one key so that no kernel sees an all-masked row.

`resolve_implementation` picks one of the paths for "auto";
`recording_attention_calls` lists the path and sizes of each call.
"""

import collections
import contextlib
import math

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.dense import einsum

IMPLEMENTATIONS = ("auto", "plain", "chunked", "fused")

# "auto" keeps the plain path while one example's scores (heads x queries x
# keys) fit in 2**25 float32 values (128 MiB); beyond that it streams.
PLAIN_MAX_SCORES = 2**25
# Default chunk: about 2**22 scores (16 MiB float32) per example per chunk:
# enough work per step to hide per-op overhead (large in eager torch), and
# small enough that each temporary stays below glibc's mmap threshold
# (32 MiB), so eager torch reuses freed memory instead of faulting in fresh
# pages every chunk (that made 2**23-score chunks ~1.5x slower per key).
CHUNK_SCORES = 2**22
MIN_CHUNK_SIZE = 64

MASKED_LOGIT = -1e30

# The lists of the `recording_attention_calls` blocks now open.
_RECORDERS = []


class AttentionCall(collections.namedtuple(
    "AttentionCall",
    "implementation batch num_heads num_queries num_keys key_channels",
)):
    """One attention call: the path it took and its sizes (None: unknown
    when traced)."""

    def score_bytes(self):
        """Bytes of the float32 `[B, H, Q, K]` scores of the plain path."""
        sizes = (self.batch, self.num_heads, self.num_queries, self.num_keys)
        if any(size is None for size in sizes):
            return None
        return 4 * math.prod(sizes)


@contextlib.contextmanager
def recording_attention_calls():
    """Yields a list that receives an `AttentionCall` for every
    `PerceiverAttention` call (or trace) made inside the block: what tests,
    benchmarks and memory estimates read to see which path ran on what."""
    calls = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


def record_attention_call(implementation, num_heads, query, key_value):
    if not _RECORDERS:
        return
    call = AttentionCall(
        implementation, query.shape[0], num_heads, query.shape[1],
        key_value.shape[1], key_value.shape[-1],
    )
    for calls in _RECORDERS:
        calls.append(call)


def validate_implementation(
    attention_implementation, key_value_chunk_size, attention_dropout=0.0
):
    """ValueErrors for the options shared by layers and the backbone."""
    if attention_implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`attention_implementation` must be one of {IMPLEMENTATIONS}. "
            f"Received: attention_implementation={attention_implementation!r}."
        )
    if key_value_chunk_size is not None and (
        isinstance(key_value_chunk_size, bool)
        or not isinstance(key_value_chunk_size, (int, np.integer))
        or key_value_chunk_size < 1
    ):
        raise ValueError(
            "`key_value_chunk_size` must be a positive integer or None. "
            f"Received: key_value_chunk_size={key_value_chunk_size!r}."
        )
    if attention_implementation == "fused" and attention_dropout > 0:
        raise ValueError(
            "attention_implementation='fused' has no dropout on the "
            "attention weights; expected attention_dropout=0. Received: "
            f"attention_dropout={attention_dropout}."
        )


def default_chunk_size(num_heads, num_queries):
    """Keys per chunk so that one chunk holds about `CHUNK_SCORES` scores."""
    if num_queries is None:
        return 1024
    return max(MIN_CHUNK_SIZE, CHUNK_SCORES // (num_heads * num_queries))


def _fused_kernel_available(compute_dtype):
    """Whether dot_product_attention here avoids materialising the scores.

    Only GPU kernels do: torch's SDPA (memory-efficient / flash kernels) and
    JAX's cuDNN flash attention, which needs half precision. On CPU, and on
    TensorFlow, the fused op computes the full score tensor.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        half = compute_dtype in ("float16", "bfloat16")
        return half and jax.devices()[0].platform == "gpu"
    return False


def resolve_implementation(
    implementation,
    num_heads,
    num_queries,
    num_keys,
    dropout_active=False,
    compute_dtype="float32",
):
    """The path "auto" takes for these sizes; other choices pass through.

    Sizes unknown when traced (None) count as large.
    """
    if implementation != "auto":
        return implementation
    if num_queries is not None and num_keys is not None:
        if num_heads * num_queries * num_keys <= PLAIN_MAX_SCORES:
            return "plain"
    if not dropout_active and _fused_kernel_available(compute_dtype):
        return "fused"
    return "chunked"


def _minimum(a, b):
    """Python ints stay Python ints (eager torch slices without a sync)."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return ops.minimum(a, b)


def _loop(num_steps, body, init):
    """`keras.ops.fori_loop(0, num_steps, body, init)`, compiled as a loop.

    TensorFlow needs `maximum_iterations` to differentiate a while loop
    under XLA (its gradient accumulators need a fixed size).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.while_loop(
            lambda i, carry: i < num_steps,
            lambda i, carry: (i + 1, body(i, carry)),
            (tf.constant(0), init),
            maximum_iterations=num_steps,
        )[1]
    return ops.fori_loop(0, num_steps, body, init)


def _flat_mask(mask, length):
    if mask is None:
        return None
    return ops.reshape(ops.cast(mask, "bool"), (-1, length))


def rows_with_keys(query_mask, key_mask, num_queries, num_keys):
    """Bool `[B, Q]` (or `[B, 1]`): rows with at least one allowed key."""
    any_key = None
    if key_mask is not None:
        key_mask = _flat_mask(key_mask, num_keys)
        any_key = ops.any(key_mask, axis=-1, keepdims=True)
    if query_mask is not None:
        query_mask = _flat_mask(query_mask, num_queries)
        if any_key is None:
            return query_mask
        return ops.logical_and(query_mask, any_key)
    return any_key


def _chunk_dropout(weights, rate, seed, chunk_index):
    """Dropout whose mask depends only on `(seed, chunk_index)`.

    Inside a compiled loop a stateful seed generator cannot advance, and a
    rematerialised chunk must draw the same mask again in the backward pass,
    so the mask comes from a stateless generator keyed by the chunk index.
    """
    keep = 1.0 - rate
    shape = ops.shape(weights)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        key = jax.random.fold_in(ops.cast(seed, "uint32"), chunk_index)
        kept = jax.random.bernoulli(key, keep, shape)
    elif backend == "tensorflow":
        import tensorflow as tf

        step = tf.cast(chunk_index, seed.dtype)
        chunk_seed = tf.stack([seed[0], seed[1] + step])
        kept = tf.random.stateless_uniform(shape, chunk_seed) < keep
    else:  # torch and numpy run eagerly: plain Python integers.
        chunk_seed = (int(seed[0]) * 1_000_003 + int(chunk_index)) % 2**31
        kept = keras.random.uniform(shape, seed=chunk_seed) < keep
    return ops.where(kept, weights / keep, ops.zeros_like(weights))


def _chunking(num_keys, chunk_size):
    """(chunk, num_chunks, overlaps) for streaming over `num_keys` keys.

    Chunks all have one static size (compiled loops need that); the last
    one is moved back to end at M, and keys it shares with its predecessor
    are skipped: no padded copy of the input is needed.
    """
    chunk = _minimum(chunk_size, num_keys)
    if isinstance(num_keys, int):
        return chunk, -(-num_keys // chunk), num_keys % chunk != 0
    return chunk, (num_keys + chunk - 1) // chunk, True


def _chunk_start(index, chunk, num_keys):
    return _minimum(index * chunk, num_keys - chunk)


def _scaled_queries(q):
    # Scaling q once saves a pass over every chunk's scores.
    head_dim = q.shape[-1]
    return q * ops.cast(1.0 / math.sqrt(head_dim), q.dtype)


def _chunk_scores(q, k, start, chunk, rows_taken, query_mask, key_mask,
                  key_limit=None):
    """Float32 masked scores `[B, H, Q, c]` of scaled queries and one chunk
    of keys starting at `start`."""
    s = ops.cast(einsum("bqhd,bkhd->bhqk", q, k, True), "float32")
    allowed = None

    def both(a, b):
        return b if a is None else ops.logical_and(a, b)

    if key_mask is not None:
        allowed = ops.slice(key_mask, (0, start), (rows_taken, chunk))
        allowed = allowed[:, None, None, :]
    if query_mask is not None:
        allowed = both(allowed, query_mask[:, None, :, None])
    if key_limit is not None:
        keys = ops.cast(start + ops.arange(chunk), key_limit.dtype)
        allowed = both(allowed,
                       keys[None, None, None, :] <= key_limit[:, None, :, None])
    if allowed is not None:
        s = ops.where(allowed, s, MASKED_LOGIT)
    return s


def _rows_taken(key_value):
    # -1 ("all") for a batch size unknown when traced: slices then keep
    # static shapes otherwise, which XLA needs for their gradients.
    return -1 if key_value.shape[0] is None else key_value.shape[0]


def _key_chunk(x, start, chunk, rows_taken):
    """Keys `start : start + chunk` of `[B, M, ...]` (static trailing dims)."""
    rest = tuple(x.shape[2:])
    return ops.slice(x, (0, start) + (0,) * len(rest),
                     (rows_taken, chunk) + rest)


def streaming_attend(
    q,
    key_value,
    project_key_value,
    value_head_dim,
    chunk_size,
    query_mask=None,
    key_mask=None,
    wipe_fully_masked_rows=True,
    dropout_rate=0.0,
    dropout_seed=None,
    remat=False,
    variables=(),
    return_statistics=False,
    key_limit=None,
):
    """Exact attention, streaming over key/value chunks.

    Args:
        q: projected queries `[B, Q, H, D]`.
        key_value: the raw key/value input `[B, M, C]`; only chunks of it
            are ever normalised and projected. A tuple of `[B, M, ...]`
            tensors (an input and its key positions, say) is cut into the
            same chunks.
        project_key_value: `[B, c, C] -> (k [B, c, H, D], v [B, c, H, Dv])`
            (one argument per tensor of a `key_value` tuple).
        value_head_dim: `Dv`.
        chunk_size: keys per chunk (the last chunk is clamped, see below).
        query_mask, key_mask: optional bool `[B, Q]`, `[B, M]`.
        key_limit: optional int `[B, Q]`: query row q sees key j only if
            `j <= key_limit[b, q]` (causal cross-attention, Perceiver AR;
            rows it leaves without keys are not wiped).
        wipe_fully_masked_rows: see `attention.attend`.
        dropout_rate, dropout_seed: attention dropout (training only); the
            seed is a `[2]` tensor drawn once per call.
        remat: recompute each chunk in the backward pass instead of storing
            its scores, so training memory does not grow with M x Q x H.
        variables: the Keras variables `project_key_value` reads. With
            `remat` their values are passed to the recomputed step, which
            reads them through a `StatelessScope`: TensorFlow's
            recompute_grad cannot capture variables inside a while loop.
        return_statistics: also return the softmax statistics `(m, l)`
            (float32 `[B, H, Q]` row maximum and sum of `exp(s - m)`) that
            `streamed_attention_weights` turns into the weights.

    Returns:
        `[B, Q, H * Dv]` in the dtype of the queries (and `(m, l)`).
    """
    batch, num_queries, num_heads, head_dim = ops.shape(q)
    key_values = tuple(key_value) if isinstance(
        key_value, (tuple, list)) else (key_value,)
    num_keys = ops.shape(key_values[0])[1]
    chunk, num_chunks, overlaps = _chunking(num_keys, chunk_size)
    key_mask = _flat_mask(key_mask, num_keys)
    query_mask = _flat_mask(query_mask, num_queries)
    q = _scaled_queries(q)
    rows_taken = _rows_taken(key_values[0])

    def step(index, start, q, kv, m, l, acc):
        k, v = project_key_value(*kv)
        s = _chunk_scores(q, k, start, chunk, rows_taken, query_mask, key_mask,
                          key_limit)
        # m is only a stabiliser: the result does not depend on it.
        m_new = ops.stop_gradient(ops.maximum(m, ops.max(s, axis=-1)))
        p = ops.exp(s - m_new[..., None])
        alpha = ops.exp(m - m_new)
        v = ops.cast(v, "float32")
        if overlaps:
            # Keys seen in the previous chunk count for nothing; they are
            # dropped from the small operands, not from the `[.., c]` scores
            # (in the max they are harmless: m has already seen them).
            fresh = ops.cast(start + ops.arange(chunk) >= index * chunk,
                             "float32")
            l = alpha * l + ops.einsum("bhqk,k->bhq", p, fresh)
            v = v * fresh[None, :, None, None]
        else:
            l = alpha * l + ops.sum(p, axis=-1)
        if dropout_rate > 0:
            # Dropping normalised weights = dropping these (l is untouched).
            p = _chunk_dropout(p, dropout_rate, dropout_seed, index)
        pv = ops.einsum("bhqk,bkhd->bhqd", p, v)
        acc = alpha[..., None] * acc + pv
        return m_new, l, acc

    def body(index, carry):
        start = _chunk_start(index, chunk, num_keys)
        kv = tuple(_key_chunk(x, start, chunk, rows_taken)
                   for x in key_values)
        if not remat:
            return step(index, start, q, kv, *carry)

        # Everything needing a gradient is an argument: TensorFlow's
        # recompute_grad differentiates arguments only (inside a loop).
        def chunk_step(q, m, l, acc, *tensors):
            kv, values = tensors[:len(key_values)], tensors[len(key_values):]
            with keras.StatelessScope(state_mapping=zip(variables, values)):
                return step(index, start, q, kv, m, l, acc)

        values = [ops.convert_to_tensor(v.value) for v in variables]
        return keras.remat(chunk_step)(q, *carry, *kv, *values)

    rows = (batch, num_heads, num_queries)
    init = (
        ops.full(rows, MASKED_LOGIT, "float32"),
        ops.zeros(rows, "float32"),
        ops.zeros(rows + (value_head_dim,), "float32"),
    )
    m, l, acc = _loop(num_chunks, body, init)
    out = acc / l[..., None]  # l >= 1: the row maximum contributes exp(0)
    out = ops.reshape(
        ops.transpose(out, (0, 2, 1, 3)), (batch, num_queries, -1)
    )
    out = ops.cast(out, q.dtype)
    if wipe_fully_masked_rows:
        any_key = rows_with_keys(query_mask, key_mask, num_queries, num_keys)
        if any_key is not None:
            out = ops.where(any_key[..., None], out, ops.zeros_like(out))
    if return_statistics:
        return out, (m, l)
    return out


def streamed_attention_weights(
    q,
    key_value,
    project_keys,
    chunk_size,
    statistics,
    query_mask=None,
    key_mask=None,
    wipe_fully_masked_rows=True,
):
    """The float32 `[B, H, Q, M]` weights of a `streaming_attend` call.

    A second pass over the same chunks: each chunk's weights are
    `exp(s - m) / l` from the call's final statistics `(m, l)`, written into
    the result; beyond the weights asked for, only one chunk's scores exist
    at a time. `project_keys`: `[B, c, C] -> k [B, c, H, D]`. Rows with no
    allowed key are zeros when `wipe_fully_masked_rows` (their output is).
    """
    m, l = statistics
    batch, num_queries, num_heads = ops.shape(q)[:3]
    num_keys, channels = ops.shape(key_value)[1], key_value.shape[-1]
    chunk, num_chunks, _ = _chunking(num_keys, chunk_size)
    key_mask = _flat_mask(key_mask, num_keys)
    query_mask = _flat_mask(query_mask, num_queries)
    q = _scaled_queries(q)
    rows_taken = _rows_taken(key_value)
    inverse_sum = 1.0 / l[..., None]

    def body(index, weights):
        # The clamped last chunk rewrites keys of its predecessor with the
        # same values.
        start = _chunk_start(index, chunk, num_keys)
        kv = ops.slice(
            key_value, (0, start, 0), (rows_taken, chunk, channels)
        )
        s = _chunk_scores(
            q, project_keys(kv), start, chunk, rows_taken, query_mask,
            key_mask,
        )
        p = ops.exp(s - m[..., None]) * inverse_sum
        return ops.slice_update(weights, (0, 0, 0, start), p)

    init = ops.zeros((batch, num_heads, num_queries, num_keys), "float32")
    weights = _loop(num_chunks, body, init)
    if wipe_fully_masked_rows:
        any_key = rows_with_keys(query_mask, key_mask, num_queries, num_keys)
        if any_key is not None:
            weights = ops.where(
                any_key[:, None, :, None], weights, ops.zeros_like(weights)
            )
    return weights


def fused_attend(q, k, v, query_mask=None, key_mask=None,
                 wipe_fully_masked_rows=True):
    """`keras.ops.dot_product_attention` with DeepMind's masking semantics.

    Args and returns as `attention.attend` (masks as `[B, Q]`, `[B, K]`).
    Kernels only see the key mask, with every key allowed for examples that
    have none (an all-masked row gives NaN in some kernels); rows with no
    allowed key are then replaced by what the plain path gives them: zeros,
    or the uniform average of the values its all -1e30 logits produce.
    """
    batch, num_queries = ops.shape(q)[0], ops.shape(q)[1]
    num_keys = ops.shape(k)[1]
    qk_dim, v_dim = q.shape[-1], v.shape[-1]
    key_mask = _flat_mask(key_mask, num_keys)
    query_mask = _flat_mask(query_mask, num_queries)
    mask = None
    if key_mask is not None:
        any_key = ops.any(key_mask, axis=-1, keepdims=True)
        mask = ops.logical_or(key_mask, ops.logical_not(any_key))
        mask = mask[:, None, None, :]  # [B, 1, 1, K]
    # Some kernels need one head size for q, k and v: zero channels change
    # neither the logits (the scale is explicit) nor the kept outputs.
    width = max(qk_dim, v_dim)

    def pad(x):
        extra = width - x.shape[-1]
        return x if extra == 0 else ops.pad(x, [(0, 0)] * 3 + [(0, extra)])

    out = ops.dot_product_attention(
        pad(q), pad(k), pad(v), mask=mask, scale=1.0 / math.sqrt(qk_dim)
    )
    out = ops.reshape(out[..., :v_dim], (batch, num_queries, -1))
    any_key = rows_with_keys(query_mask, key_mask, num_queries, num_keys)
    if any_key is not None:
        if wipe_fully_masked_rows:
            fill = ops.zeros_like(out)
        else:
            fill = ops.reshape(ops.mean(v, axis=1), (batch, 1, -1))
        out = ops.where(any_key[..., None], out, ops.cast(fill, out.dtype))
    return out
