"""`PerceiverResampler` against a NumPy transcription of the three
published resamplers (Flamingo's media/frame embeddings included)."""

import keras
import numpy as np
import pytest
from keras_hub.src.tests.test_case import TestCase

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras.layers.resampler import PerceiverResampler
from perceiver_keras.layers.resampler import RESAMPLER_VARIANTS


def np_value(variable):
    return to_numpy(variable.value)


def np_norm(norm, x, eps):
    if hasattr(norm, "gamma"):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * np_value(norm.gamma) + (
            np_value(norm.beta))
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * np_value(
        norm.scale)


def np_activation(name, x):
    from math import erf

    if name == "relu":
        return np.maximum(x, 0)
    if name == "silu":
        return x / (1 + np.exp(-x))
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def np_block(block, latents, features, mask, eps):
    """Flamingo's `PerceiverAttention` + `FeedForward`, in NumPy."""
    att, mlp = block.attention, block.mlp
    x, lat = np_norm(block.features_norm, features, eps), np_norm(
        block.latents_norm, latents, eps)
    kv = np.concatenate([x, lat], axis=1)
    d = att.head_dim

    def heads(t, n):
        return t.reshape(t.shape[0], t.shape[1], n, d)

    q = heads(lat @ np_value(att.query_dense.kernel), att.num_heads)
    k = heads(kv @ np_value(att.key_dense.kernel), att.num_key_value_heads)
    v = heads(kv @ np_value(att.value_dense.kernel), att.num_key_value_heads)
    if att.qk_norm:
        q, k = np_norm(att.query_norm, q, 1e-5), np_norm(att.key_norm, k, 1e-5)
    group = att.num_heads // att.num_key_value_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if mask is not None:
        keep = np.concatenate([mask, np.ones(lat.shape[:2], bool)], axis=1)
        logits = np.where(keep[:, None, None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(lat.shape[0], lat.shape[1], -1)
    latents = latents + out @ np_value(att.output_dense.kernel)
    h = np_norm(block.mlp_norm, latents, eps)
    if mlp.gated:
        hidden = np_activation(mlp.activation, h @ np_value(mlp.gate_dense.kernel)) * (
            h @ np_value(mlp.hidden_dense.kernel))
    else:
        hidden = np_activation(mlp.activation, h @ np_value(mlp.hidden_dense.kernel))
    return latents + hidden @ np_value(mlp.output_dense.kernel)


def np_resampler(layer, x, mask=None):
    """x: [B, T, F, V, C] -> [B, T, N, C] (lucidrains' reshapes)."""
    b, t, f, v, c = x.shape
    if layer.frame_embeddings is not None:
        x = x + np_value(layer.frame_embeddings)[:f][None, None, :, None]
    x = x.reshape(b, t, f * v, c)
    if layer.media_time_embeddings is not None:
        x = x + np_value(layer.media_time_embeddings)[:t][None, :, None]
    x = x.reshape(b * t, f * v, c)
    if mask is not None:
        mask = mask.reshape(b * t, f * v)
    latents = np.broadcast_to(np_value(layer.latents), (b * t,) + layer.latents.shape)
    for block in layer.blocks:
        latents = np_block(block, latents, x, mask, layer.norm_epsilon)
    out = np_norm(layer.output_norm, latents, layer.norm_epsilon)
    return out.reshape(b, t, layer.num_latents, c)


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        base = 1.0 if w.path.endswith(("gamma", "scale")) else 0.0
        w.assign(base + 0.5 * rng.normal(size=w.shape).astype("float32"))
    return layer


VARIANT_OPTIONS = {
    "flamingo": dict(max_num_media=3, max_num_frames=2),
    "idefics": dict(qk_norm=True),
    "idefics2": dict(num_key_value_heads=2, norm_epsilon=1e-5),
}


def make(variant, **overrides):
    options = {**VARIANT_OPTIONS[variant], **overrides}
    return PerceiverResampler.from_variant(
        variant, num_latents=3, num_layers=2, num_heads=4, head_dim=5,
        intermediate_dim=20, **options,
    )


def features(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("variant", sorted(RESAMPLER_VARIANTS))
def test_matches_numpy_reference_with_mask(variant):
    layer = make(variant)
    x = features((2, 6, 8))
    mask = np.array([[1] * 6, [1] * 2 + [0] * 4], bool)
    layer.build(x.shape)
    randomize(layer)
    got = layer(x, padding_mask=mask)
    ref = np_resampler(layer, x[:, None, None], mask[:, None, None])[:, 0]
    assert_close(got, ref)


def test_flamingo_media_and_frame_embeddings_match_numpy():
    layer = make("flamingo")
    x = features((2, 2, 2, 3, 8))  # B, T media, F frames, V features, C
    layer.build(x.shape)
    randomize(layer)
    got = layer(x)
    assert tuple(got.shape) == (2, 2, 3, 8)
    assert_close(got, np_resampler(layer, x))


def test_padding_mask_equals_dropping_the_padding():
    layer = make("idefics2")
    x = features((2, 6, 8))
    x_padded = x.copy()
    x_padded[1, 3:] = 50.0
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3], bool)
    layer.build(x.shape)
    randomize(layer)
    got = to_numpy(layer(x_padded, padding_mask=mask))
    assert_close(got[1:], to_numpy(layer(x[1:, :3])))
    assert_close(got[:1], to_numpy(layer(x[:1])))


def test_config_round_trip_and_bad_arguments():
    layer = make("idefics2")
    layer.build((None, None, 8))
    clone = PerceiverResampler.from_config(layer.get_config())
    clone.build((None, None, 8))
    clone.set_weights(layer.get_weights())
    x = features((2, 5, 8))
    assert_close(clone(x), to_numpy(layer(x)))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        PerceiverResampler(2, 1, num_heads=4, head_dim=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="norm"):
        PerceiverResampler(2, 1, num_heads=4, head_dim=4, norm="batch_norm")
    with pytest.raises(ValueError, match="variant"):
        PerceiverResampler.from_variant("blip", num_latents=2, num_layers=1,
                                        num_heads=1, head_dim=4)
    with pytest.raises(ValueError, match="features"):
        layer(features((2, 5, 1, 8)))


class ResamplerLayerTest(TestCase):
    def test_keras_hub_layer_checks(self):
        self.run_layer_test(
            cls=PerceiverResampler,
            init_kwargs=dict(
                num_latents=3, num_layers=1, num_heads=2, head_dim=4,
                num_key_value_heads=1, **RESAMPLER_VARIANTS["idefics2"],
            ),
            input_data=features((2, 5, 8)),
            expected_output_shape=(2, 3, 8),
            expected_num_trainable_weights=1 + 3 + 4 + 3 + 1,
            run_precision_checks=False,
        )
