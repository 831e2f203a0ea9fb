"""conversion/convert_hf.py: the pinned command-line interface."""

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import assert_close
from harness import run_script
from test_hf_models import build
from test_hf_models import reference
from test_hf_models import save
from test_hf_models import token_inputs

SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "convert_hf.py"


def run_cli(*args):
    # In this process; test_offline_hub_id runs the script as a program.
    return run_script("convert_hf", *args)


def test_convert_run_and_compare(tmp_path):
    model = build("PerceiverForSequenceClassification")
    source = save(model, tmp_path / "hf", "bin")
    inputs = token_inputs(length=24)
    np.savez(tmp_path / "inputs.npz", **inputs)
    result = run_cli(source, "--output", tmp_path / "preset",
                     "--inputs", tmp_path / "inputs.npz",
                     "--save-outputs", tmp_path / "outputs.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits: max|diff|" in result.stdout and " ok" in result.stdout
    with np.load(tmp_path / "outputs.npz") as outputs:
        assert list(outputs) == ["logits"]
        assert_close(outputs["logits"], reference(model, inputs)["logits"])
    assert (tmp_path / "preset" / "config.json").is_file()
    assert (tmp_path / "preset" / "transformers_config.json").is_file()

    from perceiver_keras.models.perceiver_task import PerceiverTask

    task = PerceiverTask.from_preset(str(tmp_path / "preset"))
    assert type(task).__name__ == "PerceiverTextClassifier"


def test_without_inputs_compares_on_examples(tmp_path):
    model = build("PerceiverForMaskedLM")
    result = run_cli(save(model, tmp_path / "hf"),
                     "--output", tmp_path / "preset")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(example inputs)" in result.stdout


def test_bad_arguments(tmp_path):
    result = run_cli(tmp_path, "--output", tmp_path / "p",
                     "--inputs", tmp_path / "x.npz")
    assert result.returncode == 2
    assert "--save-outputs" in result.stderr


def test_unsafe_checkpoint_is_refused(tmp_path):
    model = build("PerceiverForSequenceClassification")
    source = Path(save(model, tmp_path / "hf", "bin"))
    marker = tmp_path / "pwned"
    payload = pickle.dumps(
        {"w": _Exploit(f"touch {marker}")}, protocol=2)
    os.remove(source / "pytorch_model.bin")
    with zipfile.ZipFile(source / "pytorch_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    result = run_cli(source, "--output", tmp_path / "preset")
    assert result.returncode == 1
    assert "UnsafeCheckpointError" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "preset").exists()


def test_offline_hub_id(tmp_path):
    env_home = tmp_path / "hf_home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(env_home),
           "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "deepmind/vision-perceiver-fourier",
         "--output", str(tmp_path / "preset")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 1
    assert "Could not download 'deepmind/vision-perceiver-fourier'" in (
        result.stderr)


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("key, expected", [
    ("inputs/image", {"inputs": {"image": 1}}),
    ("attention_mask", {"attention_mask": 1}),
])
def test_unflatten(key, expected):
    from perceiver_keras.conversion.cli import unflatten

    assert unflatten({key: 1}) == expected
