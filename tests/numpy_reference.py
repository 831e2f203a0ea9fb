"""Independent NumPy implementations of the Perceiver maths, for tests."""

import math

import numpy as np


def layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def dense(x, w, b):
    return x @ w + b


def attention(q_in, kv_in, weights, num_heads, mask=None):
    """weights: dict of (w, b) for query/key/value/output; mask [B, Q, K]."""
    q = dense(q_in, *weights["query"])
    k = dense(kv_in, *weights["key"])
    v = dense(kv_in, *weights["value"])
    batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    dq, dv = q.shape[-1] // num_heads, v.shape[-1] // num_heads
    out = np.zeros((batch, nq, num_heads * dv))
    for b in range(batch):
        for h in range(num_heads):
            qh = q[b, :, h * dq:(h + 1) * dq]
            kh = k[b, :, h * dq:(h + 1) * dq]
            vh = v[b, :, h * dv:(h + 1) * dv]
            logits = qh @ kh.T / np.sqrt(dq)
            for i in range(nq):
                allowed = np.ones(nk, bool) if mask is None else mask[b, i]
                if not allowed.any():
                    continue  # a fully masked row outputs zeros
                row = np.where(allowed, logits[i], -np.inf)
                p = np.exp(row - row.max())
                p /= p.sum()
                out[b, i, h * dv:(h + 1) * dv] = p @ vh
    return dense(out, *weights["output"])


def attention_weights(layer):
    """The (w, b) pairs of a PerceiverAttention layer, as NumPy."""
    import keras

    def pair(d):
        return (keras.ops.convert_to_numpy(d.kernel).astype(np.float64),
                keras.ops.convert_to_numpy(d.bias).astype(np.float64))

    return {
        "query": pair(layer.query_dense),
        "key": pair(layer.key_dense),
        "value": pair(layer.value_dense),
        "output": pair(layer.output_dense),
    }


def fourier_features(index_dims, num_bands, max_resolution, concat_pos=True,
                     sine_only=False):
    """Loop-by-loop transcription of the formula in docs/numerics.md."""
    grids = np.meshgrid(
        *[np.linspace(-1, 1, n) for n in index_dims], indexing="ij"
    )
    positions = np.stack([g.reshape(-1) for g in grids], axis=-1)
    rows = []
    for pos in positions:
        sines, cosines = [], []
        for axis, res in enumerate(max_resolution):
            for f in np.linspace(1, res / 2, num_bands):
                sines.append(np.sin(np.pi * f * pos[axis]))
                cosines.append(np.cos(np.pi * f * pos[axis]))
        row = list(pos) if concat_pos else []
        row += sines + ([] if sine_only else cosines)
        rows.append(row)
    return np.array(rows)
