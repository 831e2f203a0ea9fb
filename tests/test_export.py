"""`model.export(...)` for serving: each task is exported with a free batch
axis, the artifact is run in a subprocess that does not import
perceiver_keras (tests/export_runner.py: TensorFlow's
`tf.saved_model.load`, onnxruntime, OpenVINO, the TFLite interpreter) on
batches of 1 and 3, and its outputs match Keras' `predict` within 1e-4
relative. Formats per backend as Keras supports them (README "Export to
serving formats")."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from perceiver_keras import PerceiverArrayAdapter
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverImageAdapter
from perceiver_keras import PerceiverImageClassifier
from perceiver_keras import PerceiverIO
from perceiver_keras import PerceiverMaskedLM
from perceiver_keras import PerceiverTextClassifier
from perceiver_keras import PerceiverTokenAdapter
from perceiver_keras.conversion import deepmind_flow
from perceiver_keras.conversion import deepmind_multimodal

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures", "deepmind")
# Keras 3 exporters per backend, each run on some of the tasks (each task is
# exported at least once over the three backends; exports are slow).
# Formats left out are not offered by Keras for that backend or fail there
# (README "Export to serving formats").
PLAN = {
    "tensorflow": {
        "tf_saved_model": ("text_classifier",),
        "onnx": ("multimodal_autoencoder",),
        "openvino": ("image_classifier",),
        "litert": ("optical_flow",),
    },
    "jax": {
        "tf_saved_model": ("classifier", "perceiver_io", "optical_flow"),
    },
    "torch": {
        "onnx": ("masked_lm", "multimodal_autoencoder"),
    },
}[keras.backend.backend()]
SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "openvino": ".xml",
          "litert": ".tflite"}
PACKAGE = {"tf_saved_model": "tensorflow", "onnx": "onnxruntime",
           "openvino": "openvino", "litert": "tensorflow"}
LATENTS = dict(num_latents=4, latent_dim=8, num_self_attends_per_block=1,
               num_self_attend_heads=2)


def _fixture_config(kind):
    with open(os.path.join(FIXTURES, f"{kind}-public", "config.json")) as f:
        return json.load(f)["deepmind_config"]


def _case(name, rng):
    floats = lambda *shape: rng.normal(size=shape).astype("float32")
    tokens = lambda: rng.integers(0, 262, (3, 16)).astype("int32")
    some_padding = np.ones((3, 16), bool)
    some_padding[1, 10:] = False
    points = lambda: PerceiverBackbone(
        (6, 2), PerceiverArrayAdapter(num_bands=2, max_resolution=(6,)),
        **LATENTS)
    text = lambda: PerceiverBackbone(
        (16,), PerceiverTokenAdapter(262, 8, 16), **LATENTS)
    if name == "multimodal_autoencoder":
        task = deepmind_multimodal.build_task(_fixture_config("multimodal"))
        return task, {k: floats(3, *shape)
                      for k, shape in task.inputs_shape.items()}
    return {
        "classifier": lambda: (
            PerceiverClassifier(points(), 3),
            {"inputs": floats(3, 6, 2),
             "padding_mask": np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 6],
                                      bool)}),
        "image_classifier": lambda: (
            PerceiverImageClassifier(PerceiverBackbone(
                (8, 8, 3), PerceiverImageAdapter("conv", 4, num_channels=4,
                                                 num_bands=2), **LATENTS), 2),
            {"inputs": floats(3, 8, 8, 3)}),
        "text_classifier": lambda: (
            PerceiverTextClassifier(text(), 2),
            {"inputs": tokens(), "padding_mask": some_padding}),
        "masked_lm": lambda: (
            PerceiverMaskedLM(text(), decoder_num_heads=2),
            {"inputs": tokens(), "padding_mask": some_padding}),
        "perceiver_io": lambda: (
            PerceiverIO(points(), output_index_dims=(6,), output_channels=1,
                        num_bands=2),
            {"inputs": floats(3, 6, 2), "padding_mask": np.ones((3, 6), bool)}),
        "optical_flow": lambda: (
            deepmind_flow.build_task(_fixture_config("optical_flow")),
            {"inputs": floats(3, 2, 12, 16, 3)}),
    }[name]()


@pytest.fixture(scope="module")
def cases():
    """name -> (task, inputs, Keras' outputs), each built once, on demand."""
    built = {}

    def get(name):
        if name not in built:
            keras.utils.set_random_seed(0)
            task, x = _case(name, np.random.default_rng(0))
            built[name] = (task, x, keras.tree.map_structure(
                np.asarray, task.predict(x, verbose=0)))
        return built[name]
    return get


def _matching(outputs, expected, batch):
    """Exported outputs of one batch size, paired with Keras' outputs: by
    name where the exporter kept it, else by shape (the multimodal outputs
    differ in shape; the other tasks have one output)."""
    found = {k.rsplit("/", 1)[0]: v for k, v in outputs.items()
             if k.endswith(f"/{batch}")}
    if not isinstance(expected, dict):
        assert len(found) == 1, sorted(found)
        return [(next(iter(found.values())), expected[:batch])]
    assert len(found) == len(expected), (sorted(found), sorted(expected))
    pairs = []
    for name, value in expected.items():
        value = value[:batch]
        same = [v for k, v in found.items() if k == name] or [
            v for v in found.values() if v.shape == value.shape]
        assert len(same) == 1, (name, sorted(found))
        pairs.append((same[0], value))
    return pairs


@pytest.mark.parametrize("format", sorted(PLAN))
def test_exported_tasks_match_keras_without_perceiver_keras(
        format, cases, tmp_path):
    pytest.importorskip(PACKAGE[format])
    jobs = []
    names = PLAN[format]
    for name in names:
        task, x, _ = cases(name)
        artifact = str(tmp_path / f"{name}{SUFFIX[format]}")
        task.export(artifact, format=format, verbose=False)
        np.savez(tmp_path / f"{name}_inputs.npz", **x)
        jobs.append({"artifact": artifact,
                     "inputs": str(tmp_path / f"{name}_inputs.npz"),
                     "outputs": str(tmp_path / f"{name}_outputs.npz")})
    with open(tmp_path / "jobs.json", "w") as f:
        json.dump(jobs, f)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "export_runner.py"), format,
         str(tmp_path / "jobs.json")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    worst = {}
    for name, job in zip(names, jobs):
        expected = cases(name)[2]
        outputs = dict(np.load(job["outputs"]))
        for batch in (1, 3):
            for actual, wanted in _matching(outputs, expected, batch):
                assert actual.shape == wanted.shape, (name, batch)
                scale = max(1.0, float(np.abs(wanted).max()))
                diff = float(np.abs(actual - wanted).max()) / scale
                worst[name] = max(worst.get(name, 0.0), diff)
    print(format, {k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) <= 1e-4, worst
