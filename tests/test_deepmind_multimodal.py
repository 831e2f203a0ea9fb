"""DeepMind video-autoencoder conversion: parity, released shapes, chunks."""

import os

import keras
import numpy as np
import pytest

from perceiver_keras.conversion import deepmind_multimodal
from perceiver_keras.layers.multimodal import PerceiverAudioAdapter
from perceiver_keras.layers.multimodal import PerceiverLabelAdapter
from perceiver_keras.layers.multimodal import PerceiverMultimodalAdapter
from perceiver_keras.models.perceiver_io.perceiver_multimodal_autoencoder import (
    PerceiverMultimodalAutoencoder,
)
from test_deepmind_flow import check_fixture_parity
from test_deepmind_flow import converted_fixture
from test_deepmind_flow import fixture_config
from test_deepmind_flow import scaled_max_diff

FIXTURE = os.path.join(
    os.path.dirname(__file__), "fixtures", "deepmind", "multimodal-public"
)




def to_numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def converted():
    """The fixture checkpoint in a small `PerceiverMultimodalAutoencoder`."""
    return converted_fixture(deepmind_multimodal, FIXTURE)


@pytest.fixture(scope="module")
def clip():
    inputs = np.load(os.path.join(FIXTURE, "inputs.npz"))
    return {"image": inputs["images"], "audio": inputs["audio"]}


def test_fixture_parity(converted, record_property):
    check_fixture_parity(
        deepmind_multimodal, converted, FIXTURE, record_property
    )


def test_chunked_reconstruction_equals_full_decode(converted, clip):
    full = to_numpy(converted.predict_on_batch(clip))
    assert full["image"].shape == (1, 2, 8, 8, 3)
    assert full["audio"].shape == (1, 64, 1)
    # 128 pixels and 16 audio patches in chunks of 32 and 4, the fixture
    # chunk's sizes (JAX then reuses compiled ops).
    chunked = converted.reconstruct(clip, num_chunks=4)
    for key in full:
        assert scaled_max_diff(chunked[key], full[key]) <= 1e-6, key


def test_chunk_queries_use_subsampled_positions(converted):
    queries = converted.decoder_queries
    points = np.array([0, 5, 127])
    features = queries.fourier_queries("image", points)
    # With concat_pos the first channels are the positions themselves.
    t, h, w = np.unravel_index(points, (2, 8, 8))
    expected = -1 + 2 * np.stack([t / 2, h / 8, w / 8], axis=-1)
    np.testing.assert_allclose(features[:, :3], expected, atol=1e-7)
    # A chunk's queries are those rows of the whole clip's queries.
    np.testing.assert_array_equal(
        queries.fourier_queries("image")[points], features
    )


def test_label_is_always_masked(converted, clip):
    """The label goes in as a mask token, so its value does not matter."""
    without = to_numpy(converted.predict_on_batch(clip))
    label = np.random.default_rng(0).normal(size=(1, 5)).astype("float32")
    with_label = to_numpy(converted.predict_on_batch({**clip, "label": label}))
    for key in without:
        np.testing.assert_array_equal(with_label[key], without[key])


def test_adapter_pads_masks_and_sorts_modalities():
    adapter = PerceiverMultimodalAdapter(
        {
            "zeta": PerceiverLabelAdapter(),
            "alpha": PerceiverAudioAdapter(
                samples_per_patch=2, position_encoding=None
            ),
        },
        min_padding_size=1,
        mask_probs={"zeta": 0.0, "alpha": 0.5},
        seed=1,
    )
    rng = np.random.default_rng(4)
    audio = rng.normal(size=(2, 100, 1)).astype("float32")
    label = rng.normal(size=(2, 3)).astype("float32")
    tokens = keras.ops.convert_to_numpy(
        adapter({"zeta": label, "alpha": audio})
    )
    assert tokens.shape == (2, 50 + 1, 3 + 1)  # "alpha" first, width 3 + 1
    alpha_padding = keras.ops.convert_to_numpy(
        adapter.paddings["alpha"].embeddings
    )  # [1, 2]
    unmasked = np.concatenate(
        [audio.reshape(2, 50, 2), np.broadcast_to(alpha_padding, (2, 50, 2))],
        axis=-1,
    )
    mask_token = keras.ops.convert_to_numpy(
        adapter.mask_tokens["alpha"].embeddings
    )[0]
    is_masked = np.all(tokens[:, :50] == mask_token, axis=-1)
    is_kept = np.all(tokens[:, :50] == unmasked, axis=-1)
    assert np.all(is_masked ^ is_kept)
    assert 20 < is_masked.sum() < 80  # about half of 100 tokens
    zeta_padding = keras.ops.convert_to_numpy(
        adapter.paddings["zeta"].embeddings
    )
    np.testing.assert_array_equal(tokens[:, 50, :3], label)
    np.testing.assert_array_equal(
        tokens[:, 50, 3:], np.tile(zeta_padding, (2, 1))
    )


def test_config_and_preset_round_trip(converted, clip, tmp_path):
    expected = to_numpy(converted.predict_on_batch(clip))
    # `from_preset` rebuilds the task with `from_config`.
    converted.save_to_preset(str(tmp_path))
    loaded = PerceiverMultimodalAutoencoder.from_preset(str(tmp_path))
    assert loaded.get_config() == converted.get_config()
    for key, value in to_numpy(loaded.predict_on_batch(clip)).items():
        np.testing.assert_array_equal(value, expected[key])


def test_bad_inputs_raise_value_error(converted, clip):
    # Called eagerly: inside a tf.function traced with relaxed shapes the
    # checks would see unknown sizes.
    with pytest.raises(ValueError, match="audio"):
        converted({"image": clip["image"]})
    with pytest.raises(ValueError, match="image"):
        converted({**clip, "image": clip["image"][:, :1]})
    with pytest.raises(ValueError, match="float"):
        converted({**clip, "audio": clip["audio"].astype("int32")})
    latents = converted.encode(clip)
    with pytest.raises(ValueError, match="points"):
        converted.decode(latents, image_points=[0, 128])
    with pytest.raises(ValueError, match="num_chunks"):
        converted.reconstruct(clip, num_chunks=17)
    with pytest.raises(ValueError, match="samples_per_patch"):
        config = fixture_config(FIXTURE)
        config["output_postprocessor"]["audio"]["samples_per_patch"] = 8
        deepmind_multimodal.build_task(config)
