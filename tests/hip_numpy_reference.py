"""NumPy HiP on a Haiku parameter dict, written from DeepMind's code.

Independent of the Keras model: it reads parameters by their Haiku names
(`perceiver/block_0/~/hi_p_cross_attention/...`) and follows
`perceiver.HiP` / `HiPClassBottleneck` and `perceiver_blocks` step by step,
in float64. Checked against the fixtures in the tests, then used where no
fixture exists (transpose_reshape, five blocks, masked labels).
"""

import math

import numpy as np


def layer_norm(x, p, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p[f"{name}/scale"] + p[
        f"{name}/offset"]


def linear(x, p, name, bias=True):
    y = x @ p[f"{name}/w"]
    return y + p[f"{name}/b"] if bias else y


# A dict while a test records: `attention` stores its softmax weights
# `[..., heads, Q, K]` under the attention's Haiku name.
RECORDED_WEIGHTS = None


def attention(q_in, kv_in, p, name, heads):
    q = linear(q_in, p, f"{name}/query_linear")
    k = linear(kv_in, p, f"{name}/key_linear")
    v = linear(kv_in, p, f"{name}/value_linear")

    def split(x):  # [..., n, (h c)] -> [..., h, n, c]
        x = x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))
        return np.swapaxes(x, -2, -3)

    q, k, v = split(q), split(k), split(v)
    logits = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    logits -= logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    if RECORDED_WEIGHTS is not None:
        RECORDED_WEIGHTS[name] = w
    out = np.swapaxes(w @ v, -2, -3)
    out = out.reshape(out.shape[:-2] + (-1,))
    return linear(out, p, f"{name}/attention_output_linear")


def mlp(x, p, name):
    h = np.maximum(linear(x, p, f"{name}/mlp_hidden_linear"), 0) ** 2
    return linear(h, p, f"{name}/mlp_output_linear")


def cross_attention(query, inputs, p, name, heads, residual):
    a = attention(layer_norm(query, p, f"{name}/layer_norm"),
                  layer_norm(inputs, p, f"{name}/layer_norm_1"),
                  p, f"{name}/attention", heads)
    if residual:
        a = a + query
    return a + mlp(layer_norm(a, p, f"{name}/layer_norm_2"), p,
                   f"{name}/dense")


def self_attention(x, p, name, heads):
    x = x + attention(layer_norm(x, p, f"{name}/layer_norm"),
                      layer_norm(x, p, f"{name}/layer_norm"),
                      p, f"{name}/attention", heads)
    return x + mlp(layer_norm(x, p, f"{name}/layer_norm_1"), p,
                   f"{name}/dense")


def assign_groups(num_groups, index_dims):
    groups = [1] * len(index_dims)
    per_group = list(map(float, index_dims))
    for _ in range(num_groups - len(index_dims)):
        m = int(np.argmax(per_group))
        groups[m] += 1
        per_group[m] = index_dims[m] / groups[m]
    return groups, math.ceil(max(per_group))


class Grouper:
    def __init__(self, num_groups, index_dims):
        self.groups, self.length = assign_groups(num_groups, index_dims)
        self.index_dims = index_dims

    def info(self, m):
        n, g = self.index_dims[m], self.groups[m]
        final = g * math.ceil(n / g) - n
        return g, final, self.length - (n + final) // g

    def group(self, arrays):
        out = []
        for m, x in enumerate(arrays):
            g, final, padding = self.info(m)
            x = np.pad(x, ((0, 0), (0, final), (0, 0)))
            x = x.reshape(x.shape[0], g, -1, x.shape[-1])
            out.append(np.pad(x, ((0, 0), (0, 0), (0, padding), (0, 0))))
        return np.concatenate(out, axis=1)

    def ungroup(self, z):
        out, first = [], 0
        for m in range(len(self.index_dims)):
            g, final, padding = self.info(m)
            x = z[:, first:first + g]
            first += g
            x = x[:, :, :x.shape[2] - padding]
            x = x.reshape(x.shape[0], -1, x.shape[-1])
            out.append(x[:, :x.shape[1] - final])
        return out


def regroup(z, groups, regroup_type):
    b, g, n, c = z.shape
    if regroup_type == "transpose_reshape":
        z = np.swapaxes(z, 1, 2)
    return z.reshape(b, groups, g * n // groups, c)


def hip(params, inputs, order, kwargs, kind="HiP"):
    """Outputs under the fixture keys (final outputs and block outputs)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    labels = list(kwargs.get("label_modalities", ())) if (
        kind == "HiPClassBottleneck") else []
    main = [m for m in order if m not in labels]
    num_groups = kwargs["num_groups"]
    n = len(num_groups)
    proc = n // 2
    r = "perceiver"
    e = kwargs["num_embedding_channels"]
    pos_ch = kwargs.get("num_position_encoding_channels")
    z_in, queries = [], []
    for k, m in enumerate(main):
        x = linear(np.asarray(inputs[m], np.float64), p,
                   f"{r}/embedder/~embed/embed_{m}")
        pos = p[f"{r}/position_encoder/pos_emb_mae_{m}/pos_embs"]
        if pos_ch is not None and pos_ch != e:
            suffix = f"_{k}" if k else ""
            pos = linear(pos, p,
                         f"{r}/position_encoder/position_encoding_linear"
                         f"{suffix}", bias=False)
        pos = np.broadcast_to(pos, x.shape)
        z_in.append(x + pos)
        queries.append(pos)
    grouper = Grouper(num_groups[0], [inputs[m].shape[1] for m in main])
    z = grouper.group(z_in)
    mae_query = grouper.group(queries)
    block = "perceiver_block" if kind == "HiPClassBottleneck" else "block"
    out, hidden = {}, []
    for i in range(n):
        if i > 0:
            z = regroup(z, num_groups[i], kwargs.get("regroup_type",
                                                     "reshape"))
        label_queries = {}
        if i == proc:
            for k, m in enumerate(labels, start=1):
                x = linear(np.asarray(inputs[m], np.float64), p,
                           f"{r}/embedder_{k}/~embed/embed_{m}")
                pos = p[f"{r}/position_encoder_{k}/pos_emb_mae_{m}/pos_embs"]
                pos = np.broadcast_to(pos, x.shape)
                z = np.concatenate([z, (x + pos)[:, None]], axis=2)
                label_queries[m] = (k, pos[:, None])
        name = f"{r}/{block}_{i}/~"
        g = num_groups[i]
        latents = p[f"{name}/hi_p_cross_attention/query_inputs/pos_embs"]
        query = np.broadcast_to(
            latents.reshape(1, g, -1, latents.shape[-1]),
            (z.shape[0], g) + (latents.shape[0] // g, latents.shape[-1]),
        )
        if i > proc:
            skip = hidden[n - 1 - i]
            if skip.shape[-1] != query.shape[-1]:
                skip = linear(skip, p, f"{name}/hi_p_cross_attention/"
                              "pre_attention_residual_linear")
            query = query + skip
        z = cross_attention(query, z, p, f"{name}/hi_p_cross_attention",
                            kwargs["num_cross_attend_heads"][i], True)
        for j in range(kwargs["num_self_attends_per_block"][i]):
            z = self_attention(z, p, f"{name}/self_attend_id_{j}",
                               kwargs["num_self_attend_heads"][i])
        hidden.append(z)
        out[f"block_{i}"] = z
        for m, (k, q) in label_queries.items():
            read = cross_attention(
                q, z, p, f"{r}/reconstruction_head/hi_p_cross_attention", 1,
                False)
            out[f"reconstruction/{m}"] = linear(
                read[:, 0], p, f"{r}/embedder_{k}/~unembed/unembed_{m}")
    head = "reconstruction_head_1" if kind == "HiPClassBottleneck" else (
        "reconstruction_head")
    read = cross_attention(mae_query, z, p,
                           f"{r}/{head}/hi_p_cross_attention", 1, False)
    for m, x, latent in zip(main, grouper.ungroup(read), grouper.ungroup(z)):
        out[f"reconstruction/{m}"] = linear(
            x, p, f"{r}/embedder/~unembed/unembed_{m}")
        out[f"latents/{m}"] = latent
    return out
