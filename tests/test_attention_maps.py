"""Attention weights on request, and the figures drawn from them.

Weights are checked against NumPy softmax(q k^T / sqrt(d)) computed in
float64 from each layer's own weights, on the plain, chunked (streamed
statistics, second pass) and fused paths, with key masks, masked queries
and a fully masked example. A backbone's maps are checked against a NumPy
forward pass of the whole encoder, and the backbone's outputs against the
same pass (asking for maps changes nothing).
"""

import io

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import assert_close
from conftest import to_numpy
from numpy_reference import attention_weights
from numpy_reference import dense
from numpy_reference import gelu
from numpy_reference import layer_norm
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverResamplerBackbone
from perceiver_keras.layers import PerceiverAttention
from perceiver_keras.layers import PerceiverImageAdapter
from perceiver_keras.layers import PerceiverSelfAttentionBlock
from perceiver_keras.layers import PerceiverTokenAdapter
from perceiver_keras.layers import chunked_attention
from perceiver_keras.visualization import PANEL_PIXELS
from perceiver_keras.visualization import attention_figure
from perceiver_keras.visualization import save_attention_png
from perceiver_keras.visualization import save_figure_png

rng = np.random.default_rng(11)


def randn(*shape):
    return rng.normal(size=shape).astype("float32")


def reference_attention(q_in, kv_in, weights, num_heads, mask=None):
    """NumPy float64: (weights [B, H, Q, K], output [B, Q, C]); a row with
    no allowed key has zero weights and zero output (before projection)."""
    q = dense(q_in, *weights["query"])
    k = dense(kv_in, *weights["key"])
    v = dense(kv_in, *weights["value"])
    batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(batch, nq, num_heads, -1)
    k = k.reshape(batch, nk, num_heads, -1)
    v = v.reshape(batch, nk, num_heads, -1)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is None:
        mask = np.ones((batch, nq, nk), bool)
    logits = np.where(mask[:, None], logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    p = np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0))
    total = p.sum(-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), 0.0)
    out = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(batch, nq, -1)
    return p, dense(out, *weights["output"])


def as64(x):
    return to_numpy(x).astype(np.float64)


# === PerceiverAttention: every path against NumPy ===

@pytest.mark.parametrize("implementation", ["plain", "chunked", "fused"])
def test_layer_weights_match_numpy(implementation):
    batch, nq, nk, heads = 3, 5, 37, 2
    query, key_value = randn(batch, nq, 6), randn(batch, nk, 10)
    key_mask = np.ones((batch, nk), bool)
    key_mask[1, 20:] = False
    key_mask[2] = False  # no key at all: zero rows
    query_mask = np.ones((batch, nq), bool)
    query_mask[0, 3] = False
    layer = PerceiverAttention(
        num_heads=heads, qk_channels=8, v_channels=12,
        attention_implementation=implementation, key_value_chunk_size=8,
    )
    plain_out = layer(query, key_value, query_mask=query_mask,
                      key_mask=key_mask)
    with chunked_attention.recording_attention_calls() as calls:
        out, weights = layer(query, key_value, query_mask=query_mask,
                             key_mask=key_mask, return_attention=True)
    assert calls[0].implementation == implementation
    mask = query_mask[:, :, None] & key_mask[:, None, :]
    expected_weights, expected_out = reference_attention(
        query.astype(np.float64), key_value.astype(np.float64),
        attention_weights(layer), heads, mask,
    )
    assert weights.shape == (batch, heads, nq, nk)
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"
    assert_close(weights, expected_weights)
    assert_close(out, expected_out)
    # The output is the one the call gives without asking for the weights.
    assert_close(out, plain_out, rtol=1e-6)
    weights = to_numpy(weights)
    assert np.all(weights[1, :, :, 20:] == 0)  # masked keys
    assert np.all(weights[2] == 0) and np.all(weights[0, :, 3] == 0)
    assert_close(weights[1].sum(-1), np.ones((heads, nq)))


def test_chunked_weights_without_masks_and_one_chunk():
    """Unmasked rows; a chunk size covering all keys (one chunk)."""
    query, key_value = randn(2, 4, 8), randn(2, 16, 8)
    layer = PerceiverAttention(num_heads=4,
                               attention_implementation="chunked",
                               key_value_chunk_size=64)
    _, weights = layer(query, key_value, return_attention=True)
    expected, _ = reference_attention(
        query.astype(np.float64), key_value.astype(np.float64),
        attention_weights(layer), 4,
    )
    assert_close(weights, expected)


def test_block_weights_as_functional_outputs():
    """A block first called with `return_attention=True` in a functional
    model outputs its weights (symbolic shapes from compute_output_spec)."""
    x = keras.Input((6, 8))
    block = PerceiverSelfAttentionBlock(num_heads=2)
    out, weights = block(x, return_attention=True)
    assert weights.shape == (None, 2, 6, 6)
    model = keras.Model(x, {"out": out, "weights": weights})
    data = randn(2, 6, 8)
    predicted = model.predict(data, verbose=0)
    normed = _norm(block.attention_norm, data.astype(np.float64))
    expected, _ = reference_attention(
        normed, normed, attention_weights(block.attention), 2
    )
    assert_close(predicted["weights"], expected)
    assert_close(predicted["out"], block(data))


# === PerceiverBackbone: maps against a NumPy forward pass ===

def _norm(layer, x):
    return layer_norm(x, as64(layer.gamma), as64(layer.beta))


def _mlp(block, x):
    hidden = gelu(dense(x, as64(block.mlp.hidden_dense.kernel),
                        as64(block.mlp.hidden_dense.bias)), True)
    return dense(hidden, as64(block.mlp.output_dense.kernel),
                 as64(block.mlp.output_dense.bias))


def reference_encoder(backbone, x, padding_mask):
    """NumPy float64 encoder for `input_adapter=None` (tokens = inputs):
    (final latents, {name: weights})."""
    tokens = x.astype(np.float64)
    latents = as64(backbone.latents.embeddings)
    h = np.repeat(latents[None], x.shape[0], axis=0)
    maps = {}
    for name, block in backbone._schedule():
        attention = block.attention
        heads = attention.num_heads
        if name.startswith("cross"):
            mask = np.repeat(padding_mask[:, None, :], h.shape[1], axis=1)
            maps[name], attended = reference_attention(
                _norm(block.query_norm, h),
                _norm(block.key_value_norm, tokens),
                attention_weights(attention), heads, mask,
            )
            h = h + attended
        else:
            normed = _norm(block.attention_norm, h)
            maps[name], attended = reference_attention(
                normed, normed, attention_weights(attention), heads
            )
            h = h + attended
        h = h + _mlp(block, _norm(block.mlp_norm, h))
    return h, maps


BACKBONE_X = randn(3, 40, 8)
BACKBONE_MASK = np.ones((3, 40), bool)
BACKBONE_MASK[1, 25:] = False
BACKBONE_MASK[2] = False


def small_backbone(**options):
    return PerceiverBackbone(
        inputs_shape=(40, 8), num_latents=6, latent_dim=16, num_blocks=2,
        num_self_attends_per_block=2, num_cross_attend_heads=2,
        num_self_attend_heads=4, num_cross_attends=2,
        share_cross_attend_weights=False, **options,
    )


@pytest.fixture(scope="module")
def backbones():
    keras.utils.set_random_seed(1)
    plain = small_backbone(attention_implementation="plain")
    chunked = small_backbone(attention_implementation="chunked",
                             key_value_chunk_size=16)
    chunked.set_weights(plain.get_weights())
    return {"plain": plain, "chunked": chunked}


@pytest.mark.parametrize("implementation", ["plain", "chunked"])
def test_backbone_maps_match_numpy(backbones, implementation):
    backbone = backbones[implementation]
    inputs = {"inputs": BACKBONE_X, "padding_mask": BACKBONE_MASK}
    with chunked_attention.recording_attention_calls() as calls:
        maps = backbone.attention_maps(inputs)
    assert {c.implementation for c in calls} == {implementation}
    expected_out, expected_maps = reference_encoder(
        backbone, BACKBONE_X, BACKBONE_MASK
    )
    assert backbone.attention_layer_names == [
        "cross_attention_0", "self_attention_0", "self_attention_1",
        "cross_attention_1", "self_attention_2", "self_attention_3",
    ]
    assert list(maps) == backbone.attention_layer_names
    assert maps["cross_attention_0"].shape == (3, 2, 6, 40)
    assert maps["self_attention_3"].shape == (3, 4, 6, 6)
    for name in maps:
        assert_close(maps[name], expected_maps[name])
    assert np.all(maps["cross_attention_1"][2] == 0)  # fully masked input
    # Asking for maps leaves the backbone's outputs as they were.
    assert len(backbone.outputs) == 1
    assert_close(backbone.predict(inputs, verbose=0), expected_out)


def test_backbone_maps_for_layers_asked_only(backbones):
    backbone = backbones["chunked"]
    with chunked_attention.recording_attention_calls() as calls:
        maps = backbone.attention_maps(BACKBONE_X, layers="self_attention_2")
    assert list(maps) == ["self_attention_2"]
    assert len(calls) == 6  # one pass; the other layers return no weights
    _, expected = reference_encoder(backbone, BACKBONE_X,
                                    np.ones((3, 40), bool))
    assert_close(maps["self_attention_2"], expected["self_attention_2"])


def test_bad_layer_names_raise(backbones):
    backbone = backbones["plain"]
    with pytest.raises(ValueError, match="`layers` must be None or names"):
        backbone.attention_maps(BACKBONE_X, layers=["cross_attention_9"])
    with pytest.raises(ValueError, match="`inputs` must have shape"):
        backbone.attention_maps(randn(2, 41, 8))


# === PerceiverResamplerBackbone: every block against NumPy ===

def _no_bias(layer):
    def pair(d):
        kernel = as64(d.kernel)
        return kernel, np.zeros(kernel.shape[-1])

    return {name: pair(getattr(layer, f"{name}_dense"))
            for name in ("query", "key", "value", "output")}


def test_resampler_maps_match_numpy(tmp_path):
    keras.utils.set_random_seed(4)
    backbone = PerceiverResamplerBackbone(
        feature_dim=8, num_latents=3, num_layers=2, num_heads=2, head_dim=4,
    )
    features = randn(2, 7, 8)
    mask = np.ones((2, 7), bool)
    mask[1, 4:] = False
    inputs = {"inputs": features, "padding_mask": mask}
    maps = backbone.attention_maps(inputs)
    assert backbone.attention_layer_names == [
        "cross_attention_0", "cross_attention_1"
    ]
    latents = np.repeat(as64(backbone.resampler.latents)[None], 2, axis=0)
    key_mask = np.concatenate([mask, np.ones((2, 3), bool)], axis=1)
    for name, block in zip(maps, backbone.resampler.blocks, strict=True):
        queries = _norm(block.latents_norm, latents)
        key_value = np.concatenate(
            [_norm(block.features_norm, features.astype(np.float64)), queries],
            axis=1,
        )
        expected, attended = reference_attention(
            queries, key_value, _no_bias(block.attention), 2,
            np.repeat(key_mask[:, None], 3, axis=1),
        )
        assert maps[name].shape == (2, 2, 3, 10)
        assert_close(maps[name], expected)
        latents = latents + attended
        mlp = block.mlp
        hidden = gelu(_norm(block.mlp_norm, latents) @ as64(
            mlp.hidden_dense.kernel), approximate=False)
        latents = latents + hidden @ as64(mlp.output_dense.kernel)
    assert np.all(maps["cross_attention_1"][1, :, :, 4:7] == 0)
    final = _norm(backbone.resampler.output_norm, latents)
    assert_close(backbone.predict(inputs, verbose=0), final)
    only = backbone.attention_maps(features, layers="cross_attention_1")
    assert list(only) == ["cross_attention_1"]
    # Keys [features; latents] drawn as one strip per latent.
    drawn = save_attention_png(backbone, inputs, tmp_path / "r.png")
    np.testing.assert_array_equal(drawn, maps["cross_attention_0"][0])
    assert _png_size(tmp_path / "r.png")[0] == (3 * PANEL_PIXELS,
                                                2 * PANEL_PIXELS)


# === Figures ===

def _panel_arrays(figure):
    return [np.asarray(ax.images[-1].get_array()) for ax in figure.axes]


def _png_size(path):
    with Image.open(path) as image:
        image.load()
        return image.size, np.asarray(image)


def test_figure_over_an_image(tmp_path):
    weights = rng.random((2, 6, 20))  # heads, latents, tokens on 4 x 5
    image = rng.random((8, 10, 3))
    figure = attention_figure(weights, (4, 5), image, latents=[0, 3, 5])
    expected = [weights[h, n].reshape(4, 5) for h in (0, 1) for n in (0, 3, 5)]
    for plotted, want in zip(_panel_arrays(figure), expected, strict=True):
        np.testing.assert_array_equal(plotted, want)
    path = save_figure_png(figure, tmp_path / "maps.png")
    size, pixels = _png_size(path)
    assert size == (3 * PANEL_PIXELS, 2 * PANEL_PIXELS)
    assert pixels.std() > 0  # something is drawn


def test_figure_over_a_sequence(tmp_path):
    weights = rng.random((3, 30))  # one head
    figure = attention_figure(weights, None, rng.random((30, 2)), heads=0,
                              latents=1)
    (plotted,) = _panel_arrays(figure)
    np.testing.assert_array_equal(plotted, weights[1][None])
    assert len(figure.axes[0].lines) == 2  # the signal's two channels
    size, _ = _png_size(save_figure_png(figure, tmp_path / "strip.png"))
    assert size == (PANEL_PIXELS, PANEL_PIXELS)


def test_figure_bad_arguments():
    with pytest.raises(ValueError, match="`grid_shape` must have 20"):
        attention_figure(np.ones((1, 2, 20)), (4, 4))
    with pytest.raises(ValueError, match=r"`latents` must be None or indices"):
        attention_figure(np.ones((1, 2, 20)), latents=[2])
    with pytest.raises(ValueError, match=r"`heads` must be None or indices"):
        attention_figure(np.ones((1, 2, 20)), heads=[-1])
    with pytest.raises(ValueError, match="`weights` must be"):
        attention_figure(np.ones(20))


def test_save_attention_png_image_task(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = PerceiverBackbone(
        inputs_shape=(8, 12, 3),
        input_adapter=PerceiverImageAdapter(
            prep_type="patches", spatial_downsample=2, num_bands=2,
            max_resolution=(4, 6),
        ),
        num_latents=5, latent_dim=8, num_self_attends_per_block=1,
        num_cross_attend_heads=1, num_self_attend_heads=2,
    )
    task = PerceiverClassifier(backbone, num_classes=3)
    images = randn(2, 8, 12, 3)
    path = tmp_path / "image.png"
    weights = save_attention_png(task, images, path, latents=[1, 4])
    assert weights.shape == (1, 5, 24)  # 4 x 6 patches
    expected = backbone.attention_maps(images, "cross_attention_0")
    np.testing.assert_array_equal(weights, expected["cross_attention_0"][0])
    size, pixels = _png_size(path)
    assert size == (2 * PANEL_PIXELS, PANEL_PIXELS) and pixels.std() > 0
    with pytest.raises(ValueError, match="`task` must be a task or backbone"):
        save_attention_png(object(), images, tmp_path / "x.png")


def test_save_attention_png_token_backbone(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = PerceiverBackbone(
        inputs_shape=(16,),
        input_adapter=PerceiverTokenAdapter(
            vocabulary_size=20, hidden_dim=8, max_sequence_length=16
        ),
        num_latents=3, latent_dim=8, num_self_attends_per_block=1,
        num_cross_attend_heads=2, num_self_attend_heads=2,
    )
    tokens = rng.integers(0, 20, (1, 16)).astype("int32")
    mask = np.ones((1, 16), bool)
    mask[0, 10:] = False
    path = tmp_path / "tokens.png"
    weights = save_attention_png(
        backbone, {"inputs": tokens, "padding_mask": mask}, path
    )
    assert weights.shape == (2, 3, 16) and np.all(weights[..., 10:] == 0)
    size, _ = _png_size(path)
    assert size == (3 * PANEL_PIXELS, 2 * PANEL_PIXELS)
