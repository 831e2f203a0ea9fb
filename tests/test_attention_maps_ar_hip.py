"""Attention maps of the Perceiver AR and HiP backbones against NumPy.

AR: a float64 NumPy forward pass written from the module docstrings
(positions, latent placement, causal and padding masks, rotary, both
mask rules) on each block's own weights; HiP: DeepMind's NumPy HiP
(`hip_numpy_reference`) on the exported parameters, recording its softmax
weights. Both check that the backbone's outputs equal the same NumPy pass
(asking for maps changes nothing), the HiP ones on the chunked path too.
"""

import keras
import numpy as np
import pytest

import hip_numpy_reference as hip_reference
from conftest import assert_close
from conftest import to_numpy
from numpy_reference import gelu
from numpy_reference import layer_norm
from perceiver_keras import PerceiverARBackbone
from perceiver_keras.conversion.hip import export_parameters
from perceiver_keras.layers import chunked_attention
from perceiver_keras.models.hip.hip_backbone import HiPBackbone


def as64(x):
    return to_numpy(x).astype(np.float64)


def randomized(backbone, seed):
    """Weights drawn N(0, 0.3), so every parameter shows in the maps."""
    rng = np.random.default_rng(seed)
    for w in backbone.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return backbone


# === Perceiver AR ===

AR_TINY = dict(vocabulary_size=30, hidden_dim=8, num_layers=2, num_heads=2,
               max_sequence_length=12, max_latents=4)
AR_STYLES = {
    # krasserm: latents in the keys, learned positions, rotary on half of
    # each head, left padding.
    "krasserm": dict(AR_TINY, num_rotary_self_attention_layers=1),
    # DeepMind: right padding, invalid latents masked as keys, a linear
    # latent query, partial rotary heads, an extra cross-attend.
    "deepmind": dict(
        AR_TINY, activation="squared_relu", use_qkv_bias=True,
        use_mlp_bias=True, self_attention_output_bias=True,
        mask_rules="deepmind", latent_query="linear", latents_in_keys=False,
        position_embedding=None, position_start=1, rotary_fraction=0.5,
        rotary_heads_fraction=0.5, rotary_max_wavelength=24,
        rotary_frequency_spacing="linspace", final_norm=True,
        tie_embeddings=False, additional_cross_attend_after_layers=[0],
    ),
}


def _ar_inputs(style):
    ids = np.random.default_rng(5).integers(0, 30, (3, 10)).astype("int32")
    mask = np.ones((3, 10), "int32")
    if style == "krasserm":
        mask[1, :3] = 0  # left padding
        mask[2, :8] = 0  # fewer tokens than latents
    else:
        mask[1, 7:] = 0  # right padding
        mask[2, 2:] = 0  # fewer tokens than latents
    return {"token_ids": ids, "padding_mask": mask}


def _rotate(x, positions, fraction, heads_fraction, wavelength, spacing):
    """x [B, T, H, D] rotated in adjacent pairs of the first channels."""
    d, h = x.shape[-1], x.shape[2]
    r = 2 * int(d * fraction // 2)
    rotated_heads = int(h * heads_fraction)
    if not r or not rotated_heads:
        return x
    if spacing == "linspace":
        inverse = wavelength ** -((2 / r) * np.linspace(0, r / 2, r // 2))
    else:
        inverse = 1 / wavelength ** (np.arange(0, r, 2) / r)
    angles = positions[..., None, None] * np.repeat(inverse, 2)
    part = x[:, :, :rotated_heads, :r]
    turned = np.empty_like(part)
    turned[..., 0::2], turned[..., 1::2] = -part[..., 1::2], part[..., 0::2]
    x = x.copy()
    x[:, :, :rotated_heads, :r] = part * np.cos(angles) + turned * np.sin(
        angles)
    return x


def _dense(layer, x):
    y = x @ as64(layer.kernel)
    return y + as64(layer.bias) if layer.use_bias else y


def _ln(layer, x):
    return layer_norm(x, as64(layer.gamma), as64(layer.beta))


def _ar_attention(block, q_in, kv_in, q_pos, k_pos, mask, rotary_fraction):
    """(weights [B, H, Q, K], output): masked logits replaced by -1e30."""
    att = block.attention
    heads = att.num_heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1)

    options = (rotary_fraction, block.rotary_heads_fraction,
               block.rotary_max_wavelength, block.rotary_frequency_spacing)
    q = _rotate(split(_dense(att.query_dense, q_in)), q_pos, *options)
    k = _rotate(split(_dense(att.key_dense, kv_in)), k_pos, *options)
    v = split(_dense(att.value_dense, kv_in))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask[:, None], logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(q_in.shape)
    return w, _dense(att.output_dense, out)


def _ar_mlp(block, x, activation):
    mlp = block.mlp
    hidden = _dense(mlp.hidden_dense, _ln(mlp.norm, x))
    if activation == "squared_relu":
        hidden = np.maximum(hidden, 0) ** 2
    else:
        hidden = gelu(hidden, approximate=False)
    return x + _dense(mlp.output_dense, hidden)


def reference_ar(backbone, config, inputs):
    """NumPy Perceiver AR: (final latents, {block name: weights})."""
    ids, mask = inputs["token_ids"], inputs["padding_mask"].astype(bool)
    batch, length = ids.shape
    n = min(config["max_latents"], length)
    krasserm = config.get("mask_rules", "krasserm") == "krasserm"
    start = config.get("position_start", 0)
    positions = np.where(mask, np.cumsum(mask, 1) - 1 + start, 0)
    x = as64(backbone.token_embedding.embeddings)[ids]
    if backbone.position_embedding is not None:
        x = x + as64(backbone.position_embedding.embeddings)[positions]
    if krasserm:
        end = np.full((batch, 1), length)
    else:  # latents end at each row's last token
        end = (mask * np.arange(1, length + 1)).max(1, keepdims=True)
    index = np.maximum(end - n + np.arange(n), -1)
    latents = x[np.arange(batch)[:, None], index % length]
    for dense in backbone.latent_query_layers:  # "linear": one Dense
        latents = _dense(dense, latents)
    # DeepMind's num_latents_per_position K: each position's query and
    # last step repeated K times, a [K, C] embedding tiled over positions;
    # latents see every latent whose last step is not later than theirs.
    k = config.get("latents_per_position", 1)
    index = np.repeat(index, k, 1)
    latents = np.repeat(latents, k, 1)
    if k > 1:
        latents = latents + np.tile(
            as64(backbone.latent_position_embedding), (n, 1))
    valid = (index >= 0) & np.take_along_axis(mask, index % length, 1)
    q_pos = np.take_along_axis(positions, index % length, 1)
    cross_mask = (np.arange(length) <= index[..., None]) & mask[:, None]
    self_mask = index[:, None, :] <= index[:, :, None]
    if not krasserm:
        self_mask = (self_mask & valid[:, None]) | np.eye(n * k, dtype=bool)
    activation = config.get("activation", "gelu_erf")
    fraction = config.get("rotary_fraction", 0.5)
    rotary_layers = config.get("num_rotary_self_attention_layers",
                               config["num_layers"])
    maps = {}

    def cross(block, query):
        normed = _ln(block.query_norm, query)
        keys = _ln(block.key_value_norm, x)
        if block.latents_in_keys:
            keys = np.concatenate([keys[:, :length - n], normed], axis=1)
        maps[block.name], attended = _ar_attention(
            block, normed, keys, q_pos, positions, cross_mask, fraction)
        return _ar_mlp(block, query + attended, activation)

    h = latents
    blocks = iter(backbone.cross_attention_blocks)
    h = cross(next(blocks), h)
    for i, block in enumerate(backbone.self_attention_blocks):
        normed = _ln(block.attention_norm, h)
        maps[block.name], attended = _ar_attention(
            block, normed, normed, q_pos, q_pos, self_mask,
            fraction if i < rotary_layers else 0.0)
        h = _ar_mlp(block, h + attended, activation)
        if i in config.get("additional_cross_attend_after_layers", ()):
            h = cross(next(blocks), h)
    if backbone.output_norm is not None:
        h = _ln(backbone.output_norm, h)
    h = h.reshape(batch, n, k, -1).mean(2)  # each position's K latents
    return h, maps


@pytest.fixture(scope="module", params=sorted(AR_STYLES))
def ar_backbone(request):
    keras.utils.set_random_seed(0)
    config = AR_STYLES[request.param]
    return request.param, config, randomized(PerceiverARBackbone(**config), 1)


def test_ar_maps_match_numpy(ar_backbone):
    style, config, backbone = ar_backbone
    inputs = _ar_inputs(style)
    maps = backbone.attention_maps(inputs)
    expected_out, expected = reference_ar(backbone, config, inputs)
    names = ["cross_attention_0", "self_attention_0", "self_attention_1"]
    if style == "deepmind":
        names.insert(2, "cross_attention_1")
    assert backbone.attention_layer_names == names
    assert list(maps) == names
    assert maps["cross_attention_0"].shape == (3, 2, 4, 10)
    assert maps["self_attention_1"].shape == (3, 2, 4, 4)
    for name in names:
        assert_close(maps[name], expected[name])
    cross = maps["cross_attention_0"]
    if style == "krasserm":  # left pads get 0; causal over the context
        assert np.all(cross[1, :, :, :3] == 0)
        assert np.all(cross[0, :, 0, 7:] == 0) and cross[0, :, 0, 6].all()
    else:  # the latents end at the last token; none sees a right pad
        assert np.all(cross[1, :, :, 7:] == 0) and cross[1, :, 3, 6].all()
        assert_close(cross[2, :, 0], np.full((2, 10), 0.1))  # no key: uniform
    assert np.all(np.triu(maps["self_attention_0"], 1) == 0)  # causal
    # Asking for maps leaves the backbone's outputs as they were.
    assert_close(backbone.predict(inputs, verbose=0), expected_out)


def test_ar_maps_for_layers_and_latents_asked(ar_backbone):
    style, config, backbone = ar_backbone
    inputs = _ar_inputs(style)
    maps = backbone.attention_maps(inputs, "self_attention_1", num_latents=2)
    assert list(maps) == ["self_attention_1"]
    assert maps["self_attention_1"].shape == (3, 2, 2, 2)
    _, expected = reference_ar(backbone, dict(config, max_latents=2), inputs)
    assert_close(maps["self_attention_1"], expected["self_attention_1"])
    with pytest.raises(ValueError, match="`layers` must be None or names"):
        backbone.attention_maps(inputs, ["self_attention_2"])
    with pytest.raises(ValueError, match="`inputs` must be a dict"):
        backbone.attention_maps(inputs["token_ids"])


# === HiP ===

HIP = dict(
    modalities={"image": (12, 3), "audio": (5, 2)},
    num_groups=[4, 1, 4], num_self_attends_per_block=[1, 2, 1],
    z_index_dim=[3, 8, 3], num_z_channels=[8, 12, 8],
    num_cross_attend_heads=[1, 2, 1], num_self_attend_heads=[2, 3, 2],
    num_embedding_channels=8,
)
HIP_NAMES = [
    "block_0/cross_attention", "block_0/self_attention_0",
    "block_1/cross_attention", "block_1/self_attention_0",
    "block_1/self_attention_1", "block_2/cross_attention",
    "block_2/self_attention_0", "reconstruction_head",
]


def _haiku_name(name):
    if name == "reconstruction_head":
        return "perceiver/reconstruction_head/hi_p_cross_attention/attention"
    block, layer = name.split("/")
    layer = ("hi_p_cross_attention" if layer == "cross_attention"
             else layer.replace("self_attention_", "self_attend_id_"))
    return f"perceiver/{block}/~/{layer}/attention"


@pytest.fixture(scope="module")
def hip_backbones():
    keras.utils.set_random_seed(0)
    plain = randomized(HiPBackbone(**HIP, attention_implementation="plain"),
                       2)
    chunked = HiPBackbone(**HIP, attention_implementation="chunked",
                          key_value_chunk_size=4)
    chunked.set_weights(plain.get_weights())
    rng = np.random.default_rng(3)
    inputs = {name: rng.normal(size=(2, m, c)).astype("float32")
              for name, (m, c) in HIP["modalities"].items()}
    hip_reference.RECORDED_WEIGHTS = {}
    try:
        expected = hip_reference.hip(export_parameters(plain), inputs,
                                     list(HIP["modalities"]), HIP)
        weights = hip_reference.RECORDED_WEIGHTS
    finally:
        hip_reference.RECORDED_WEIGHTS = None
    return {"plain": plain, "chunked": chunked}, inputs, expected, weights


def test_hip_maps_match_numpy(hip_backbones):
    backbones, inputs, expected, weights = hip_backbones
    backbone = backbones["plain"]
    maps = backbone.attention_maps(inputs)
    assert backbone.attention_layer_names == HIP_NAMES
    assert list(maps) == HIP_NAMES
    # [B, groups, heads, queries, keys per group]
    assert maps["block_0/cross_attention"].shape == (2, 4, 1, 3, 5)
    assert maps["block_1/self_attention_1"].shape == (2, 1, 3, 8, 8)
    assert maps["block_2/cross_attention"].shape == (2, 4, 1, 3, 2)
    assert maps["reconstruction_head"].shape == (2, 4, 1, 5, 3)
    for name in HIP_NAMES:
        assert_close(maps[name], weights[_haiku_name(name)])
    # Asking for maps leaves the backbone's outputs as they were.
    outputs = backbone.predict_on_batch(inputs)
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key])


def test_hip_chunked_maps_for_layers_asked_only(hip_backbones):
    """The chunked path (weights from a second pass over the chunks, the
    key/value LayerNorm per chunk); only block 0 runs."""
    backbones, inputs, _, weights = hip_backbones
    backbone = backbones["chunked"]
    names = ["block_0/self_attention_0", "block_0/cross_attention"]
    with chunked_attention.recording_attention_calls() as calls:
        maps = backbone.attention_maps(inputs, names)
    assert list(maps) == names
    assert [c.implementation for c in calls] == ["chunked"] * 2
    for name in names:
        assert_close(maps[name], weights[_haiku_name(name)])
    with pytest.raises(ValueError, match="`layers` must be None or names"):
        backbone.attention_maps(inputs, "block_3/cross_attention")
    with pytest.raises(ValueError, match="one array per modality"):
        backbone.attention_maps({"image": inputs["image"]})


def test_ar_latents_per_position_match_numpy():
    """DeepMind's num_latents_per_position = 2: 4 positions x 2 latents,
    rows with too few tokens and right padding; the output is each
    position's mean."""
    config = dict(AR_STYLES["deepmind"], latents_per_position=2)
    backbone = randomized(PerceiverARBackbone(**config), 2)
    inputs = _ar_inputs("deepmind")
    expected_out, expected = reference_ar(backbone, config, inputs)
    out = backbone.predict(inputs, verbose=0)
    assert out.shape == (3, 4, 8)
    assert_close(out, expected_out)
    maps = backbone.attention_maps(inputs)
    assert maps["self_attention_0"].shape == (3, 2, 8, 8)
    for name in ("cross_attention_0", "self_attention_0"):
        assert_close(maps[name], expected[name])
    # Not the K = 1 model: the position embedding and grouping matter.
    single = dict(AR_STYLES["deepmind"])
    assert np.abs(expected_out - reference_ar(
        backbone, single, inputs)[0]).max() > 1e-3
    with pytest.raises(ValueError, match="latents_per_position"):
        PerceiverARBackbone(**dict(AR_STYLES["krasserm"],
                                   latents_per_position=2))
