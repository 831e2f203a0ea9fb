"""DeepMind checkpoint conversion: fixture parity, released names, safety.

The fixtures (`fixtures/deepmind/*-public`) are small models made with
DeepMind's own code; each must be reproduced within
`2e-5 * max(1, max|ref|)` on every backend, by the converted model and by
the preset it was saved to.
"""

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import assert_close
from harness import load_script
from perceiver_keras.conversion.deepmind import KINDS
from perceiver_keras.conversion.deepmind import checkpoint_tensors
from perceiver_keras.conversion.deepmind import convert_deepmind
from perceiver_keras.conversion.deepmind import kind_module
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.presets import builtin_preset
from perceiver_keras.models.presets import keras_config
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.utils.deepmind_checkpoint import load_deepmind_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "conversion" / "convert_deepmind.py"
FIXTURES = Path(__file__).parent / "fixtures" / "deepmind"
PARAM_TREES = Path(__file__).parent / "fixtures" / "deepmind_param_trees.txt"
TASK_CLASSES = {
    "image_learned": PerceiverImageClassifier,
    "image_fourier": PerceiverImageClassifier,
    "image_conv": PerceiverImageClassifier,
    "mlm": PerceiverMaskedLM,
}
# Built-in preset -> its section in deepmind_param_trees.txt.
RELEASED_TREES = {
    "perceiver_io_imagenet_learned": "imagenet_learned_position_encoding",
    "perceiver_io_imagenet_fourier": "imagenet_fourier_position_encoding",
    "perceiver_io_imagenet_conv": "imagenet_conv_preprocessing",
    "perceiver_io_language_bytes": "language",
    "perceiver_io_optical_flow": "optical_flow",
    "perceiver_io_multimodal_kinetics700": "video_autoencoding",
}


def fixture(kind):
    folder = FIXTURES / f"{kind}-public"
    config = json.loads((folder / "config.json").read_text())
    return folder, config


def fixture_arrays(kind, which):
    with np.load(FIXTURES / f"{kind}-public" / f"{which}.npz") as data:
        return dict(data)


def assert_outputs_match(outputs, kind):
    reference = fixture_arrays(kind, "outputs")
    assert sorted(outputs) == sorted(reference)
    for key, expected in reference.items():
        assert_close(outputs[key], expected)


def released_tree(section):
    """`(params, state)`: `{name: shape}` of one released checkpoint."""
    trees, current = {"P": {}, "S": {}}, None
    for line in PARAM_TREES.read_text().splitlines():
        if line.startswith("====="):
            current = line.split()[1]
        elif current == section and line[:2] in ("P ", "S "):
            kind, name, shape = line.split(" ", 2)
            trees[kind][name] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return trees["P"], trees["S"]


# --- fixture parity ---------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TASK_CLASSES))
def test_conversion_reproduces_fixture(kind, tmp_path):
    folder, config = fixture(kind)
    preset = tmp_path / "preset"
    task = convert_deepmind(folder / config["checkpoint"], config, preset)
    inputs = fixture_arrays(kind, "inputs")
    assert_outputs_match(kind_module(kind).run_inputs(task, inputs), kind)

    # The saved preset reproduces the outputs too.
    reloaded = TASK_CLASSES[kind].from_preset(str(preset))
    assert type(reloaded) is type(task)
    assert_outputs_match(kind_module(kind).run_inputs(reloaded, inputs), kind)


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(CLI), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )


def test_cli_converts_runs_and_saves_a_loadable_preset(tmp_path):
    kind = "image_conv"  # BatchNorm state exercises the params+state table
    folder, config = fixture(kind)
    preset, outputs = tmp_path / "preset", tmp_path / "outputs.npz"
    result = run_cli(
        folder / config["checkpoint"], "--config", folder / "config.json",
        "--output", preset, "--inputs", folder / "inputs.npz",
        "--save-outputs", outputs,
    )
    assert result.returncode == 0, result.stderr
    assert "image_conv" in result.stdout
    with np.load(outputs) as saved:
        assert_outputs_match(dict(saved), kind)
    reloaded = PerceiverImageClassifier.from_preset(str(preset))
    assert_outputs_match(
        kind_module(kind).run_inputs(reloaded, fixture_arrays(kind, "inputs")),
        kind,
    )
    # predict() on raw images preprocesses as DeepMind's colab does.
    converter = reloaded.preprocessor.image_converter
    assert converter.mode == "deepmind"
    assert converter.crop_fraction == 224 / 256
    assert tuple(converter.image_size) == (config["deepmind_config"]
                                           ["image_size"],) * 2


def test_cli_rejects_bad_arguments(tmp_path):
    module = load_script("convert_deepmind")
    folder, config = fixture("image_fourier")
    checkpoint = folder / config["checkpoint"]
    with pytest.raises(SystemExit) as exit_info:  # neither --model nor --config
        module.main([str(checkpoint), "--output", str(tmp_path / "p")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):  # --inputs without --save-outputs
        module.main([str(checkpoint), "--config", str(folder / "config.json"),
                     "--output", str(tmp_path / "p"),
                     "--inputs", str(folder / "inputs.npz")])
    # Another kind's architecture does not fit the checkpoint.
    other = FIXTURES / "image_learned-public" / "config.json"
    code = module.main([str(checkpoint), "--config", str(other),
                        "--output", str(tmp_path / "p")])
    assert code == 1
    assert not (tmp_path / "p").exists()


# --- safety and all-or-nothing ----------------------------------------------


class _RunsShellCommand:
    """Pickles as a call of os.system, as a tampered checkpoint could."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cli_refuses_a_pickle_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    checkpoint = tmp_path / "evil.pystate"
    payload = {"params": {"x": _RunsShellCommand(f"touch {marker}")}}
    checkpoint.write_bytes(pickle.dumps(payload, protocol=3))
    folder, _ = fixture("image_conv")
    code = load_script("convert_deepmind").main([
        str(checkpoint), "--config", str(folder / "config.json"),
        "--output", str(tmp_path / "preset"),
    ])
    assert code == 1
    stderr = capsys.readouterr().err
    assert "refusing" in stderr and "system" in stderr
    assert not marker.exists()
    assert not (tmp_path / "preset").exists()


def write_checkpoint(path, params, state):
    """A checkpoint in DeepMind's layout ({'params', 'state'} of mappings)."""
    def nest(flat):
        tree = {}
        for name, value in flat.items():
            module, _, leaf = name.rpartition("/")
            tree.setdefault(module, {})[leaf] = value
        return tree

    with open(path, "wb") as f:
        pickle.dump({"params": nest(params), "state": nest(state)}, f)


def test_mismatched_checkpoint_lists_names_and_writes_nothing(tmp_path):
    folder, config = fixture("image_conv")
    params, state = load_deepmind_checkpoint(folder / config["checkpoint"])
    missing = "perceiver_encoder/~/self_attention_1/mlp/linear/w"
    missing_state = (
        "image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/var_ema/average"
    )
    leftover = "perceiver_encoder/~/self_attention_2/mlp/linear/w"
    params[leftover] = params.pop(missing)
    del state[missing_state]
    broken = tmp_path / "broken.pystate"
    write_checkpoint(broken, params, state)

    output = tmp_path / "out" / "preset"
    with pytest.raises(ValueError) as error:
        convert_deepmind(broken, config, output)
    message = str(error.value)
    assert "absent from the checkpoint" in message
    assert missing in message and missing_state in message
    assert "not used" in message and leftover in message
    assert not output.exists()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_ema_bookkeeping_is_the_only_unused_state():
    folder, config = fixture("image_conv")
    params, state = load_deepmind_checkpoint(folder / config["checkpoint"])
    tensors = checkpoint_tensors(params, state)
    dropped = sorted(set(state) - set(tensors))
    assert dropped and all(
        name.endswith(("/hidden", "/counter")) for name in dropped
    )
    assert all(name.endswith("/average") for name in set(state) & set(tensors))


def test_unsupported_deepmind_arguments_are_refused():
    _, config = fixture("image_fourier")
    deepmind_config = json.loads(json.dumps(config["deepmind_config"]))
    deepmind_config["input_preprocessor"]["n_extra_pos_mlp"] = 2
    with pytest.raises(ValueError, match="n_extra_pos_mlp"):
        kind_module("image_fourier").build_task(deepmind_config)
    deepmind_config = json.loads(json.dumps(config["deepmind_config"]))
    deepmind_config["encoder"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        kind_module("image_fourier").build_task(deepmind_config)
    with pytest.raises(ValueError, match="kind"):
        convert_deepmind("unused", {"kind": "nope", "deepmind_config": {}}, "x")


# --- the six released models ------------------------------------------------


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="weight shapes do not depend on the backend: built once, on TF",
)
@pytest.mark.parametrize("name", sorted(RELEASED_TREES))
def test_builtin_model_matches_released_checkpoint(name, tmp_path, monkeypatch):
    """Built offline at full size: parameter count and checkpoint names.

    The converter's table for the model must name exactly the tensors of the
    released checkpoint (params, and BatchNorm averages) with their shapes,
    and assign every model weight once.
    """
    spec = builtin_preset(name)
    if importlib.util.find_spec(KINDS[spec["kind"]]) is None:
        pytest.skip("builder not available")
    monkeypatch.setenv("PERCEIVER_KERAS_HOME", str(tmp_path))  # no local copy
    task = PerceiverTask.from_preset(name, load_weights=False)

    params, state = released_tree(RELEASED_TREES[name])
    rows = kind_module(spec["kind"]).weight_rows(task, spec["deepmind_config"])
    expected = checkpoint_tensors(params, state)  # drops EMA bookkeeping
    assert sorted(name for name, _, _ in rows) == sorted(expected)
    for checkpoint_name, variable, transform in rows:
        value = np.zeros(expected[checkpoint_name], "float32")
        value = value if transform is None else transform(value)
        assert value.shape == tuple(variable.shape), checkpoint_name
    assigned = [id(variable) for _, variable, _ in rows]
    assert sorted(assigned) == sorted(id(w) for w in task.weights)

    trainable = sum(int(np.prod(w.shape)) for w in task.trainable_weights)
    released_params = sum(int(np.prod(shape)) for shape in params.values())
    assert trainable == released_params == spec["params"]

    # The committed Keras config is what the converter builds from
    # DeepMind's arguments (conversion/write_builtin_presets.py).
    keras.backend.clear_session()  # default layer names, as the script has
    converted = kind_module(spec["kind"]).build_task(spec["deepmind_config"])
    assert keras_config(converted) == spec["keras_config"]
    keras.backend.clear_session()
