"""The array adapter's feature options (Fourier features of chosen input
channels, a per-element input projection) and the sequence adapter's 1-D
conv stem, checked against NumPy."""

import keras
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras import PerceiverBackbone
from perceiver_keras import count_params
from perceiver_keras import recommended_config
from perceiver_keras import token_shape
from perceiver_keras.layers import PerceiverArrayAdapter
from perceiver_keras.layers import PerceiverSequenceAdapter

rng = np.random.default_rng(0)


def feature_fourier_reference(x, channels, num_bands, max_frequency):
    """x, then sin and cos of pi * f * x[c] for every chosen channel c
    (channel-major, then frequency) with f = linspace(1, max_frequency)."""
    freqs = np.linspace(1.0, max_frequency, num_bands)
    scaled = np.concatenate(
        [np.pi * freqs * x[..., c:c + 1] for c in channels], axis=-1
    )
    return np.concatenate([x, np.sin(scaled), np.cos(scaled)], axis=-1)


def test_feature_fourier_features_match_numpy():
    x = rng.uniform(-1, 1, size=(2, 5, 4)).astype("float32")
    adapter = PerceiverArrayAdapter(
        position_encoding=None, feature_fourier_channels=(0, 2),
        feature_num_bands=3, feature_max_frequency=5.0,
    )
    out = adapter(x)
    expected = feature_fourier_reference(
        x.astype("float64"), (0, 2), 3, 5.0
    )
    assert out.shape == (2, 5, 4 + 2 * 3 * 2)
    assert adapter.compute_output_shape((None, 5, 4)) == (None, 5, 16)
    assert_close(out, expected)


def test_projection_then_positions_match_numpy():
    x = rng.uniform(-1, 1, size=(2, 6, 3)).astype("float32")
    adapter = PerceiverArrayAdapter(
        num_bands=4, max_resolution=(6,), feature_fourier_channels=(1,),
        feature_num_bands=2, input_projection_dim=7,
    )
    out = to_numpy(adapter(x))
    # The projection reads the widened features (3 + 2*2 = 7 inputs).
    kernel = to_numpy(adapter.input_projection.kernel).astype("float64")
    bias = to_numpy(adapter.input_projection.bias).astype("float64")
    assert kernel.shape == (7, 7)
    widened = feature_fourier_reference(x.astype("float64"), (1,), 2, 8.0)
    # DeepMind's 1-D positions: linspace(-1, 1), bands up to resolution / 2.
    grid = np.linspace(-1.0, 1.0, 6)[:, None]
    scaled = np.pi * grid * np.linspace(1.0, 3.0, 4)
    positions = np.concatenate([grid, np.sin(scaled), np.cos(scaled)], -1)
    expected = np.concatenate(
        [widened @ kernel + bias, np.broadcast_to(positions, (2, 6, 9))], -1
    )
    assert out.shape == (2, 6, 7 + 9)
    assert adapter.compute_output_shape((None, 6, 3)) == (None, 6, 16)
    assert_close(out, expected)


@pytest.mark.parametrize(
    "options",
    [
        dict(input_projection_dim=16),
        dict(feature_fourier_channels=(0, 1, 2), feature_num_bands=4),
        dict(feature_fourier_channels=(2,), input_projection_dim=8),
    ],
)
def test_count_params_and_token_shape_cover_feature_options(options):
    config = dict(
        inputs_shape=(None, 3),
        input_adapter=PerceiverArrayAdapter(position_encoding=None, **options),
        num_latents=4, latent_dim=8, num_self_attends_per_block=1,
        num_self_attend_heads=2,
    )
    width = options.get("input_projection_dim") or (
        3 + 2 * options.get("feature_num_bands", 8)
        * len(options.get("feature_fourier_channels", ()))
    )
    assert token_shape(config) == (None, width)
    backbone = PerceiverBackbone(**config)
    assert backbone.token_width == width
    assert count_params(config) == backbone.count_params()


def test_feature_options_survive_get_config():
    adapter = PerceiverArrayAdapter(
        position_encoding=None, feature_fourier_channels=[0, 1],
        feature_num_bands=3, feature_max_frequency=4.0, input_projection_dim=5,
    )
    x = rng.normal(size=(1, 4, 3)).astype("float32")
    out = adapter(x)
    clone = PerceiverArrayAdapter.from_config(adapter.get_config())
    clone.build(x.shape)
    clone.set_weights(adapter.get_weights())
    assert clone.feature_fourier_channels == (0, 1)
    assert clone.input_projection_dim == 5
    assert_close(clone(x), out)


@pytest.mark.parametrize(
    "options,argument",
    [
        (dict(feature_fourier_channels=()), "feature_fourier_channels"),
        (dict(feature_fourier_channels=(-1,)), "feature_fourier_channels"),
        (dict(feature_num_bands=0), "feature_num_bands"),
        (dict(feature_max_frequency=-2.0), "feature_max_frequency"),
        (dict(input_projection_dim=0), "input_projection_dim"),
    ],
)
def test_bad_feature_options_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=f"`{argument}`.*Received"):
        PerceiverArrayAdapter(position_encoding=None, **options)


def test_fourier_channel_beyond_the_input_names_the_argument():
    adapter = PerceiverArrayAdapter(
        position_encoding=None, feature_fourier_channels=(3,)
    )
    with pytest.raises(ValueError, match="feature_fourier_channels.*3 channels"):
        adapter.build((None, 5, 3))
    keras.backend.clear_session()


# --- the sequence adapter's 1-D conv stem --------------------------------


def conv_stem_reference(x, kernel, bn, pool):
    """NumPy: SAME 7-wide stride-2 conv without bias (TensorFlow's SAME
    puts the odd padding element on the right), BatchNorm with its moving
    statistics, ReLU, SAME 3-wide stride-2 pool (averages count only the
    real elements, as TensorFlow's do)."""
    gamma, beta, mean, var = bn

    def same_pad(length, size, stride):
        total = max((-(-length // stride) - 1) * stride + size - length, 0)
        return total // 2, total - total // 2  # TensorFlow's SAME

    left, right = same_pad(x.shape[1], 7, 2)
    padded = np.pad(x, ((0, 0), (left, right), (0, 0)))
    conv = np.stack(
        [np.einsum("bkc,kco->bo", padded[:, i:i + 7], kernel)
         for i in range(0, padded.shape[1] - 6, 2)], 1,
    )
    h = np.maximum((conv - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
    left, right = same_pad(h.shape[1], 3, 2)
    fill = -np.inf if pool == "max" else np.nan
    padded = np.pad(h, ((0, 0), (left, right), (0, 0)), constant_values=fill)
    reduce = np.max if pool == "max" else np.nanmean
    return np.stack(
        [reduce(padded[:, i:i + 3], axis=1)
         for i in range(0, padded.shape[1] - 2, 2)], 1,
    )


@pytest.mark.parametrize("pool", ["max", "average"])
@pytest.mark.parametrize("length", [13, 32])
def test_sequence_conv_stem_matches_numpy(pool, length):
    x = rng.normal(size=(2, length, 3)).astype("float32")
    adapter = PerceiverSequenceAdapter(
        prep_type="conv", num_channels=5, conv_pool=pool, num_bands=2,
        max_resolution=(8,),
    )
    adapter.build(x.shape)
    bn = [rng.uniform(0.5, 1.5, 5), rng.normal(size=5),
          rng.normal(size=5), rng.uniform(0.5, 2.0, 5)]
    adapter.batch_norm.set_weights([b.astype("float32") for b in bn])
    kernel = to_numpy(adapter.conv.kernel).astype("float64")
    stem = conv_stem_reference(x.astype("float64"), kernel, bn, pool)
    tokens = -(-length // 4)
    assert stem.shape == (2, tokens, 5)
    # 1-D Fourier positions of the token grid follow the stem's channels.
    grid = np.linspace(-1.0, 1.0, tokens)[:, None]
    scaled = np.pi * grid * np.linspace(1.0, 4.0, 2)
    positions = np.concatenate([grid, np.sin(scaled), np.cos(scaled)], -1)
    expected = np.concatenate(
        [stem, np.broadcast_to(positions, (2, tokens, 5))], -1
    )
    assert adapter.compute_output_shape((None, length, 3)) == (
        None, tokens, 10
    )
    assert_close(adapter(x, training=False), expected)


def test_sequence_adapter_round_trips_and_counts_params():
    config = recommended_config("sequence")  # any length
    backbone = PerceiverBackbone(**config)
    assert count_params(config) == backbone.count_params()
    adapter = backbone.input_adapter
    clone = PerceiverSequenceAdapter.from_config(adapter.get_config())
    assert (clone.prep_type, clone.conv_pool) == ("conv", "average")
    x = rng.normal(size=(2, 13, 1)).astype("float32")
    clone.build(x.shape)
    clone.set_weights(adapter.get_weights())
    assert_close(clone(x), adapter(x))
    for length in (9, 40):
        x = rng.normal(size=(2, length, 1)).astype("float32")
        assert backbone.predict(x, verbose=0).shape == (2, 32, 64)
    # One token per 4 elements: a padding mask cannot follow them.
    assert "padding_mask" not in backbone.input
    with pytest.raises(ValueError, match="padding_mask"):
        backbone({"inputs": x, "padding_mask": np.ones((2, 40), bool)})


@pytest.mark.parametrize(
    "options,argument",
    [
        (dict(prep_type="conv1d"), "prep_type"),
        (dict(prep_type="conv", conv_pool="min", num_channels=4), "conv_pool"),
        (dict(prep_type="conv"), "num_channels"),
    ],
)
def test_bad_sequence_adapter_options_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=f"`{argument}`.*Received"):
        PerceiverSequenceAdapter(**options)


def test_sequence_adapter_names_the_expected_rank():
    adapter = PerceiverSequenceAdapter(prep_type="conv", num_channels=4)
    with pytest.raises(ValueError, match=r"\[batch, length, channels\]"):
        adapter.build((None, 8, 8, 3))
