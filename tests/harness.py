"""The checks every model family runs, in one place.

Two layers of checks, both driven by a model (or a way to build one) and
example data, so a new family (Perceiver AR, HiP, resampler, ...) writes its
factories and data once and calls these instead of re-writing the checks:

1. keras-hub's own conformance suite, `keras_hub.src.tests.test_case.
   TestCase` (`run_backbone_test`, `run_task_test`, `run_preset_test`,
   `run_model_saving_test`, `run_serialization_test`, ...), callable from
   plain pytest functions through `hub`:

       from harness import hub, init_kwargs_of
       hub.run_backbone_test(PerceiverBackbone, kwargs, x, (2, 6, 16))
       hub.run_task_test(MyTask, init_kwargs_of(task), (x, y))

   `init_kwargs_of(model)` gives the constructor arguments of a built
   model (backbone and preprocessor as objects), so a converted model can be
   handed to keras-hub's checks. keras-hub skips its precision checks on
   torch CPU and its quantization checks on torch; `check_policies` and
   `quantized_error` below run everywhere.

2. The project's own checks, each a function asserting numbers:

   - `check_config_round_trip(model, x)`: `from_config(get_config())`
     rebuilds the same config, and with the same weights the same outputs.
   - `check_preset_round_trip(model, x, directory)`: `save_to_preset` then
     `from_preset` (the class's and keras-hub's generic one) predict the
     same, bit for bit.
   - `check_data_forms(model, x)`: `predict` on NumPy, `tf.data` and a
     `keras.utils.PyDataset` give the same outputs.
   - `check_fit_lowers_loss(model, x, y, ...)`: training lowers the loss.
   - `check_bad_inputs(model, cases)`: each bad input raises a ValueError
     matching its message, from `__call__` and from `predict`.
   - `check_policies(factory, x)`: under `mixed_float16`, `mixed_bfloat16`
     and `bfloat16` every sublayer carries the policy, weights have its
     variable dtype and float outputs its compute dtype.
   - `policy_error(model, x, policy)` and `quantized_error(model, x)`: the
     scaled max|diff| of a model's outputs under a dtype policy or after
     `quantize("int8")`, against its float32 outputs.

Models are costly to build on this machine's 2 cores: build them once per
module (`@pytest.fixture(scope="module")`) where checks only read them.
"""

import contextlib
import importlib.util
import io
import json
import tempfile
import types
from pathlib import Path

import keras
import keras_hub
import numpy as np
from keras_hub.src.tests.test_case import TestCase as KerasHubTestCase

POLICIES = ("mixed_float16", "mixed_bfloat16", "bfloat16")


class _KerasHubChecks(KerasHubTestCase):
    """keras-hub's TestCase, usable outside a unittest run."""

    def runTest(self):  # unittest needs one test method to instantiate
        pass

    def get_temp_dir(self):
        return tempfile.mkdtemp(prefix="keras_hub_checks_")


hub = _KerasHubChecks()


def to_numpy(structure):
    return keras.tree.map_structure(
        lambda t: None if t is None else keras.ops.convert_to_numpy(t),
        structure,
    )


def scaled_max_diff(actual, expected):
    """max|actual - expected| / max(1, max|expected|) over every output."""
    worst = 0.0
    for a, e in zip(keras.tree.flatten(to_numpy(actual)),
                    keras.tree.flatten(to_numpy(expected))):
        a, e = np.asarray(a, "float64"), np.asarray(e, "float64")
        assert a.shape == e.shape, (a.shape, e.shape)
        scale = max(1.0, float(np.abs(e).max(initial=0.0)))
        worst = max(worst, float(np.abs(a - e).max(initial=0.0)) / scale)
    return worst


def outputs_of(model, x):
    """`model(x)` as NumPy: `x` is model input (already preprocessed;
    `predict_on_batch` would run a task's preprocessor again)."""
    return to_numpy(model(x, training=False))


def assert_same_outputs(actual, expected, tolerance=0.0):
    diff = scaled_max_diff(actual, expected)
    assert diff <= tolerance, f"scaled max|diff|={diff:.3g} > {tolerance:.3g}"


def init_kwargs_of(model):
    """Constructor arguments of `model`, with backbone and preprocessor
    rebuilt as objects (what keras-hub's `run_*_test` take)."""
    config = dict(model.get_config())
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    for key in ("backbone", "preprocessor"):
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def check_task_saving_and_preset(task, x, directory):
    """keras-hub's serialization, model saving and preset tests on a task
    (the saving test rebuilt without its preprocessor, on model inputs
    `x`), the preset written to `directory`."""
    hub.run_serialization_test(task)
    kwargs = {**init_kwargs_of(task), "preprocessor": None}
    hub.run_model_saving_test(task.__class__, kwargs, x)
    task.save_to_preset(str(directory))
    hub.run_preset_test(task.__class__, str(directory), x,
                        expected_output=task(x))


def check_config_round_trip(model, x):
    """`from_config(get_config())` gives the same config (also through
    JSON and `serialize_keras_object`) and, with the same weights, the same
    outputs."""
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == (
        json.dumps(config, sort_keys=True, default=str)
    )
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    )
    assert type(restored) is type(model)
    assert restored.get_config() == clone.get_config()
    assert clone.count_params() == model.count_params()
    clone.set_weights(model.get_weights())
    assert_same_outputs(outputs_of(clone, x), outputs_of(model, x))
    return clone


def check_preset_round_trip(model, x, directory):
    """`save_to_preset` + `from_preset` predicts exactly as before, via the
    model's class and via keras-hub's generic `Backbone` / `Task`."""
    directory = str(directory)
    expected = outputs_of(model, x)
    model.save_to_preset(directory)
    restored = model.__class__.from_preset(directory)
    assert type(restored) is type(model)
    assert_same_outputs(outputs_of(restored, x), expected)
    generic = (
        keras_hub.models.Backbone
        if isinstance(model, keras_hub.models.Backbone)
        else keras_hub.models.Task
    ).from_preset(directory)
    assert type(generic) is type(model)
    assert_same_outputs(outputs_of(generic, x), expected)
    return restored


class ArrayBatches(keras.utils.PyDataset):
    """A plain `PyDataset` over arrays (a user's own data loader)."""

    def __init__(self, x, y=None, batch_size=2):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(keras.tree.flatten(self.x)[0]) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = keras.tree.map_structure(lambda a: a[rows], self.x)
        if self.y is None:
            return (x,)
        return x, keras.tree.map_structure(lambda a: a[rows], self.y)


def check_data_forms(model, x, batch_size=2, tolerance=1e-6):
    """`predict` gives the same outputs on NumPy, `tf.data` and a
    `PyDataset` (batched alike)."""
    import tensorflow as tf

    x = to_numpy(x)
    expected = model.predict(x, batch_size=batch_size, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    assert_same_outputs(model.predict(dataset, verbose=0), expected,
                        tolerance)
    assert_same_outputs(
        model.predict(ArrayBatches(x, batch_size=batch_size), verbose=0),
        expected, tolerance,
    )
    return expected


def check_fit_lowers_loss(model, x, y=None, epochs=3, factor=0.9, **fit):
    """Training for `epochs` brings the evaluated loss below `factor` times
    its value before training; returns (before, after)."""
    before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    model.fit(x, y, epochs=epochs, verbose=0, **fit)
    after = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after < factor * before, (before, after)
    return before, after


def check_bad_inputs(model, cases):
    """Each `(inputs, message)` in `cases` raises a ValueError matching
    `message`, from `model(inputs)` and from `model.predict(inputs)`."""
    import pytest

    for inputs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(inputs)
        with pytest.raises(ValueError, match=message):
            model.predict(inputs, verbose=0)


def with_dtype(init_kwargs, dtype):
    """`init_kwargs` with `dtype`, and every layer in it rebuilt under it
    (a sublayer passed as an object keeps its own policy otherwise)."""
    kwargs = {}
    for key, value in init_kwargs.items():
        if isinstance(value, keras.layers.Layer):
            config = {**value.get_config(), "dtype": dtype}
            value = value.__class__.from_config(config)
        kwargs[key] = value
    return {**kwargs, "dtype": dtype}


def check_policies(factory, x, policies=POLICIES):
    """`factory(dtype=policy)` builds a model in which every sublayer has
    the policy, every float weight its variable dtype, and every float
    output (eager and `compute_output_spec`) its compute dtype.

    For a class and its arguments:
    `factory = lambda dtype: cls(**with_dtype(init_kwargs, dtype))`.
    """
    for name in policies:
        policy = keras.dtype_policies.get(name)
        model = factory(dtype=policy)
        wrong = [
            layer.path or layer.name for layer in model._flatten_layers()
            if not isinstance(layer, keras.layers.InputLayer)
            and (layer.compute_dtype, layer.variable_dtype)
            != (policy.compute_dtype, policy.variable_dtype)
        ]
        assert not wrong, f"{name}: sublayers without the policy: {wrong}"
        wrong = [
            w.path for w in model.weights
            if "float" in w.dtype and w.dtype != policy.variable_dtype
        ]
        assert not wrong, f"{name}: weights in another dtype: {wrong}"
        outputs = keras.tree.flatten(model(x))
        specs = keras.tree.flatten(model.compute_output_spec(x))
        assert len(outputs) == len(specs)
        for tensor in outputs + specs:
            dtype = keras.backend.standardize_dtype(tensor.dtype)
            if "float" in dtype:
                assert dtype == policy.compute_dtype, (name, dtype)


def policy_error(model, x, policy):
    """Scaled max|diff| of `model`'s outputs rebuilt under `policy` (same
    weights) against its float32 outputs."""
    expected = outputs_of(model, x)
    config = model.get_config()
    config["dtype"] = policy
    if isinstance(config.get("backbone"), dict):  # a task: its backbone too
        backbone = config["backbone"]
        config["backbone"] = {
            **backbone, "config": {**backbone["config"], "dtype": policy}
        }
    other = model.__class__.from_config(config)
    other.set_weights(model.get_weights())
    return scaled_max_diff(outputs_of(other, x), expected)


def quantized_error(model, x, mode="int8"):
    """Scaled max|diff| of `model`'s outputs after `quantize(mode)` (on a
    copy with the same weights) against its float outputs."""
    expected = outputs_of(model, x)
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.quantize(mode)
    quantized = [
        layer for layer in copy._flatten_layers()
        if getattr(layer, "quantization_mode", None) == mode
    ]
    assert quantized, f"no layer was quantized to {mode}"
    # Every Dense, PerceiverDense included (Keras skips Dense subclasses
    # that do not opt in, with only a warning).
    missed = [
        layer.path for layer in copy._flatten_layers()
        if isinstance(layer, keras.layers.Dense)
        and getattr(layer, "quantization_mode", None) != mode
    ]
    assert not missed, f"Dense layers left unquantized: {missed}"
    return scaled_max_diff(outputs_of(copy, x), expected)


def record(name, value):
    """Prints a measured number (shown by `pytest -s` and in test logs)."""
    print(f"[{keras.backend.backend()}] {name}: {value:.3g}")


@keras.saving.register_keras_serializable(package="perceiver_keras_tests")
class PassThroughPreprocessor(keras_hub.models.Preprocessor):
    """For tasks without a preprocessor of their own: keras-hub's
    `run_task_test` needs one; this one hands the data through unchanged."""

    def call(self, x, y=None, sample_weight=None):
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


def load_script(name, folder="conversion"):
    """`<folder>/<name>.py` as a module (scripts and examples are not a
    package)."""
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, path))
    module.__spec__.loader.exec_module(module)
    return module


def run_script(name, *args):
    """`python conversion/<name>.py ARGS` in this process (no interpreter
    start-up and imports per call): `returncode`, `stdout`, `stderr`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = load_script(name).main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(),
                                 stderr=err.getvalue())
