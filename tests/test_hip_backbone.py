"""HiP against DeepMind's HiP / HiPClassBottleneck (fixtures made with
google-deepmind/hierarchical_perceiver) and a NumPy reference."""

import json
import os

import numpy as np
import pytest

import hip_numpy_reference as reference
from conftest import assert_close
from conftest import to_numpy
from harness import load_script
from perceiver_keras.conversion.hip import convert_hip_backbone
from perceiver_keras.conversion.hip import export_parameters
from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.hip.hip_classifier import HiPClassifier
from perceiver_keras.models.hip.hip_masked_autoencoder import (
    HiPMaskedAutoencoder,
)
from perceiver_keras.models.hip.hip_layers import HiPRegroup
from perceiver_keras.models.hip.hip_layers import group_plan

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hip")
CASES = ("hip3_mae", "hipcb3_cls")


def fixture(case):
    d = os.path.join(FIXTURES, case)
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    params = dict(np.load(os.path.join(d, "params.npz")))
    inputs = dict(np.load(os.path.join(d, "inputs.npz")))
    outputs = dict(np.load(os.path.join(d, "outputs.npz")))
    return d, config, params, inputs, outputs


@pytest.fixture(scope="module", params=CASES)
def converted(request, tmp_path_factory):
    """Each fixture converted and run through the pinned command line."""
    d, config, params, inputs, expected = fixture(request.param)
    out = tmp_path_factory.mktemp(request.param)
    status = load_script("convert_hip").main([
        os.path.join(d, "params.npz"),
        "--config", os.path.join(d, "config.json"),
        "--output", str(out / "preset"),
        "--inputs", os.path.join(d, "inputs.npz"),
        "--save-outputs", str(out / "outputs.npz"),
    ])
    assert status == 0
    outputs = dict(np.load(out / "outputs.npz"))
    return config, params, inputs, expected, out / "preset", outputs


def test_every_fixture_output_matches(converted):
    config, _, _, expected, _, outputs = converted
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key]), key


def test_preset_reloads_with_the_weights(converted):
    config, params, _, _, preset, _ = converted
    task_cls = (HiPClassifier if config["kind"] == "HiPClassBottleneck"
                else HiPMaskedAutoencoder)
    task = task_cls.from_preset(str(preset))
    assert type(task) is task_cls
    assert task.backbone.count_params() == config["num_params"]
    # The weights, by DeepMind name (outputs: see the test above).
    reloaded = export_parameters(task.backbone, config["kind"])
    assert sorted(reloaded) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(reloaded[name], value)


def test_cli_failure_leaves_no_preset(tmp_path):
    d, config, params, _, _ = fixture("hip3_mae")
    params.pop("perceiver/block_2/~/self_attend_id_0/layer_norm/scale")
    np.savez(tmp_path / "params.npz", **params)
    status = load_script("convert_hip").main([
        str(tmp_path / "params.npz"),
        "--config", os.path.join(d, "config.json"),
        "--output", str(tmp_path / "preset"),
    ])
    assert status == 1
    assert not (tmp_path / "preset").exists()


def test_numpy_reference_reproduces_fixture(converted):
    # Validates the reference used below where no fixture exists.
    config, params, inputs, expected, _, _ = converted
    out = reference.hip(params, inputs, config["input_order"],
                        config["constructor_kwargs"], config["kind"])
    for key, value in out.items():
        assert_close(value, expected[key])


def test_group_plan_as_reference():
    # hip3_mae: image (200) -> 3 groups of 67, audio (56) -> 1 group.
    assert group_plan([200, 56], 4) == ([3, 1], 67)
    assert group_plan([10, 10, 10], 4) == ([2, 1, 1], 10)
    with pytest.raises(ValueError, match="num_groups"):
        group_plan([5, 5, 5], 2)


@pytest.mark.parametrize("regroup_type", ["reshape", "transpose_reshape"])
def test_regroup(regroup_type):
    x = np.arange(2 * 4 * 3 * 5, dtype="float32").reshape(2, 4, 3, 5)
    out = to_numpy(HiPRegroup(2, regroup_type)(x))
    y = np.swapaxes(x, 1, 2) if regroup_type == "transpose_reshape" else x
    np.testing.assert_array_equal(out, y.reshape(2, 2, 6, 5))


FIVE_BLOCKS = dict(
    modalities={"video": (37, 3), "audio": (20, 2), "label": (1, 4)},
    label_modalities=["label"],
    num_groups=[4, 2, 1, 2, 4],
    num_self_attends_per_block=[1, 1, 1, 1, 1],
    z_index_dim=[4, 4, 6, 4, 4],
    num_z_channels=[8, 8, 16, 12, 8],
    num_cross_attend_heads=[1, 2, 1, 1, 1],
    num_self_attend_heads=[2, 2, 4, 2, 2],
    cross_attend_widening_factor=[1, 1, 1, 1, 1],
    self_attend_widening_factor=[2, 2, 2, 2, 2],
    num_embedding_channels=8,
    num_position_encoding_channels=4,
    regroup_type="transpose_reshape",
)


@pytest.fixture(scope="module")
def five_blocks():
    backbone = HiPBackbone(**FIVE_BLOCKS)
    # Non-trivial biases and norms, so every parameter matters.
    rng = np.random.default_rng(0)
    for w in backbone.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return backbone


def test_five_blocks_transpose_reshape_against_numpy(five_blocks):
    # Run through from_config(get_config()): checks the config round trip
    # with the same compiled call.
    rebuilt = HiPBackbone.from_config(five_blocks.get_config())
    rebuilt.set_weights(five_blocks.get_weights())
    rng = np.random.default_rng(1)
    inputs = {n: rng.normal(size=(2, m, c)).astype("float32")
              for n, (m, c) in FIVE_BLOCKS["modalities"].items()}
    params = export_parameters(five_blocks, "HiPClassBottleneck")
    assert len(params) == len(five_blocks.weights)
    kwargs = dict(FIVE_BLOCKS)
    expected = reference.hip(params, inputs, list(kwargs["modalities"]),
                             kwargs, "HiPClassBottleneck")
    outputs = rebuilt.predict_on_batch(inputs)
    assert sorted(outputs) == sorted(expected)
    for key in expected:
        assert_close(outputs[key], expected[key])


def test_bad_inputs_name_the_modality(five_blocks):
    good = {n: np.zeros((2, m, c), "float32")
            for n, (m, c) in FIVE_BLOCKS["modalities"].items()}
    with pytest.raises(ValueError, match="one array per modality"):
        five_blocks({"video": good["video"]})
    with pytest.raises(ValueError, match=r"`audio` must have shape"):
        five_blocks({**good, "audio": np.zeros((2, 21, 2), "float32")})
    with pytest.raises(ValueError, match="same batch size"):
        five_blocks({**good, "audio": np.zeros((3, 20, 2), "float32")})
    with pytest.raises(ValueError, match="float"):
        five_blocks({**good, "video": np.zeros((2, 37, 3), "int32")})


def test_bad_configs():
    base = dict(FIVE_BLOCKS)
    with pytest.raises(ValueError, match="processor"):
        HiPBackbone(**{**base, "num_groups": [4, 2, 2, 2, 4]})
    with pytest.raises(ValueError, match="odd number of blocks"):
        HiPBackbone(**{**base, **{k: v[:4] for k, v in base.items()
                                  if isinstance(v, list) and len(v) == 5}})
    with pytest.raises(ValueError, match="label_modalities"):
        HiPBackbone(**{**base, "label_modalities": ["text"]})
    with pytest.raises(ValueError, match="regroup_type"):
        HiPBackbone(**{**base, "regroup_type": "shuffle"})


def test_conversion_is_all_or_nothing():
    _, config, params, _, _ = fixture("hip3_mae")
    missing = dict(params)
    missing.pop("perceiver/block_1/~/self_attend_id_0/layer_norm/scale")
    with pytest.raises(ValueError, match="absent from the checkpoint"):
        convert_hip_backbone(missing, config)
    extra = {**params, "perceiver/block_9/~/x/w": np.zeros(3)}
    with pytest.raises(ValueError, match="not used"):
        convert_hip_backbone(extra, config)
