"""DeepMind optical-flow conversion: fixture parity, released shapes, tiling."""

import json
import os

import keras
import numpy as np
import pytest

from perceiver_keras.conversion import deepmind_flow
from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.models.perceiver_io.perceiver_optical_flow import PerceiverOpticalFlow
from perceiver_keras.models.perceiver_io.perceiver_optical_flow import window_origins
from perceiver_keras.utils.deepmind_checkpoint import load_deepmind_checkpoint

HERE = os.path.dirname(__file__)
FIXTURE = os.path.join(HERE, "fixtures", "deepmind", "optical_flow-public")
PARAM_TREES = os.path.join(HERE, "fixtures", "deepmind_param_trees.txt")
TOLERANCE = 2e-5  # of max(1, max|reference|), the fixtures' tolerance


def fixture_config(fixture=FIXTURE):
    with open(os.path.join(fixture, "config.json")) as f:
        return json.load(f)["deepmind_config"]


def scaled_max_diff(actual, expected):
    """max|actual - expected| / max(1, max|expected|)."""
    actual = keras.ops.convert_to_numpy(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(actual - expected).max()) / scale


def converted_fixture(conversion, fixture):
    """The checkpoint in `fixture` converted by `conversion` (a
    `perceiver_keras.conversion.deepmind_*` module) into its small task."""
    config = fixture_config(fixture)
    params, state = load_deepmind_checkpoint(
        os.path.join(fixture, "checkpoint.pickle")
    )
    task = conversion.build_task(config)
    rows = conversion.weight_rows(task, config)
    assign_weights(task, rows, {**params, **state})
    return task


def check_fixture_parity(conversion, task, fixture, record_property):
    """`task` on the fixture's inputs reproduces DeepMind's outputs."""
    inputs = dict(np.load(os.path.join(fixture, "inputs.npz")))
    expected = np.load(os.path.join(fixture, "outputs.npz"))
    outputs = conversion.run_inputs(task, inputs)
    assert sorted(outputs) == sorted(expected.files)
    for key in expected.files:
        diff = scaled_max_diff(outputs[key], expected[key])
        record_property(f"{key}_scaled_max_diff", diff)
        print(f"{keras.backend.backend()} {key}: max|diff|/scale={diff:.3g}")
        assert diff <= TOLERANCE, key


@pytest.fixture(scope="module")
def converted():
    """The fixture checkpoint converted into a small `PerceiverOpticalFlow`."""
    return converted_fixture(deepmind_flow, FIXTURE)


def test_fixture_parity(converted, record_property):
    check_fixture_parity(deepmind_flow, converted, FIXTURE, record_property)


def colab_grid_indices(image_shape, patch_size, min_overlap):
    ys = list(range(0, image_shape[0], patch_size[0] - min_overlap))
    xs = list(range(0, image_shape[1], patch_size[1] - min_overlap))
    ys[-1] = image_shape[0] - patch_size[0]
    xs[-1] = image_shape[1] - patch_size[1]
    return [(y, x) for y in ys for x in xs]


def colab_stitch(window_flows, grid, patch_size, height, width):
    """The colab's `compute_optical_flow` loop on precomputed window flows."""
    flows, flow_count = 0, 0
    for flow_piece, (y, x) in zip(window_flows, grid):
        weights_x, weights_y = np.meshgrid(
            np.arange(patch_size[1]), np.arange(patch_size[0])
        )
        weights_x = np.minimum(weights_x + 1, patch_size[1] - weights_x)
        weights_y = np.minimum(weights_y + 1, patch_size[0] - weights_y)
        weights = np.minimum(weights_x, weights_y)[np.newaxis, :, :, np.newaxis]
        padding = [(0, 0), (y, height - y - patch_size[0]),
                   (x, width - x - patch_size[1]), (0, 0)]
        flows = flows + np.pad(flow_piece * weights, padding)
        flow_count = flow_count + np.pad(weights, padding)
    return flows / flow_count


def test_tiling_one_window_equals_direct_call(converted):
    frames = np.random.default_rng(0).normal(size=(2, 2, 12, 16, 3))
    frames = frames.astype("float32")
    direct = keras.ops.convert_to_numpy(converted.predict_on_batch(frames))
    tiled = converted.predict_tiled(frames, min_overlap=4)
    assert scaled_max_diff(tiled, direct) <= 1e-5


def test_tiling_stitches_like_the_colab(converted):
    height, width, overlap = 20, 30, 4
    frames = np.random.default_rng(1).normal(size=(2, 2, height, width, 3))
    frames = frames.astype("float32")
    window = converted.window_size
    grid = colab_grid_indices((height, width), window, overlap)
    assert grid == window_origins((height, width), window, overlap)
    # Rows 0, 8, 8 (twice, as the colab), columns 0, 12, 14.
    assert len(grid) == 3 * 3
    window_flows = [
        keras.ops.convert_to_numpy(converted.predict_on_batch(
            frames[:, :, y:y + window[0], x:x + window[1]]
        ))
        for y, x in grid
    ]
    expected = colab_stitch(window_flows, grid, window, height, width)
    # Batches of two windows: the shape every other call here compiles for.
    tiled = converted.predict_tiled(frames, min_overlap=overlap, batch_size=2)
    assert scaled_max_diff(tiled, expected) <= 1e-5
    # Stitching did something: interior window seams are averaged.
    assert not np.allclose(tiled[:, :window[0], :window[1]], window_flows[0])


def test_windows_never_cross_the_frame_edge():
    # The colab's grid would start a 16-wide window at column 24 of 37.
    origins = window_origins((21, 37), (12, 16), min_overlap=4)
    assert sorted({y for y, _ in origins}) == [0, 8, 9]
    assert sorted({x for _, x in origins}) == [0, 12, 21]


def test_tiling_rejects_small_frames_and_overlap(converted):
    frames = np.zeros((1, 2, 10, 16, 3), "float32")
    with pytest.raises(ValueError, match="at least"):
        converted.predict_tiled(frames, min_overlap=4)
    with pytest.raises(ValueError, match="min_overlap"):
        converted.predict_tiled(np.zeros((1, 2, 12, 16, 3), "float32"), 12)
    with pytest.raises(ValueError, match="frames"):
        converted.predict_tiled(np.zeros((1, 3, 12, 16, 3), "float32"))


def test_config_and_preset_round_trip(converted, tmp_path):
    frames = np.random.default_rng(3).normal(size=(1, 2, 12, 16, 3))
    frames = frames.astype("float32")
    expected = keras.ops.convert_to_numpy(converted.predict_on_batch(frames))

    # The colab's x20 is a config option: without it, the raw output.
    config = converted.get_config()
    assert config["flow_scale_factor"] == 20.0
    raw = PerceiverOpticalFlow.from_config({**config, "flow_scale_factor": 1})
    raw.set_weights(converted.get_weights())
    unscaled = keras.ops.convert_to_numpy(raw.predict_on_batch(frames))
    assert scaled_max_diff(20 * unscaled, expected) <= 1e-6

    # `from_preset` rebuilds the task with `from_config`.
    converted.save_to_preset(str(tmp_path))
    loaded = PerceiverOpticalFlow.from_preset(str(tmp_path))
    assert loaded.get_config() == config
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.predict_on_batch(frames)), expected
    )


def test_bad_inputs_raise_value_error(converted):
    with pytest.raises(ValueError, match="inputs"):
        converted(np.zeros((1, 2, 12, 15, 3), "float32"))
    with pytest.raises(ValueError, match="unsupported|Unsupported"):
        deepmind_flow.build_task({**fixture_config(), "colour": True})
