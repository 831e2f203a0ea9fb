"""What keeps training and inference fast (issue 14), checked by numbers
and by what runs, never by timings.

- No tracked layer is left unbuilt (fresh models, and tasks whose
  preprocessor was removed or replaced): Keras' trainers rebuild a model
  with an unbuilt layer on every `train_on_batch`, and JAX runs it eagerly
  before each `predict_on_batch`. Counting the backbone's `call`s shows it.
- `PerceiverDense` (2-D view of `[B, N, C]`) computes what Keras' Dense does;
  on JAX with bfloat16 it asks XLA for float32 accumulation.
- `from_preset(dir, dtype=...)` on a transformers directory builds the
  model in that dtype, close to float32.
- Fourier features work under `torch.compile`.
"""

import keras
import numpy as np
import pytest

from conftest import assert_close
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverTask
from perceiver_keras import recommended_config
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.position_encoding import FourierPositionEncoding

BACKEND = keras.backend.backend()
# Backbone `call`s per predict/train call once compiled: torch runs eagerly.
CALLS_PER_STEP = 1 if BACKEND == "torch" else 0

SHAPES = {"image": (8, 8, 3), "sequence": (12, 2), "point_set": (12, 3),
          "text": (12,)}


def unbuilt_layers(model):
    return [layer.name for layer in model._flatten_layers() if not layer.built]


@pytest.fixture
def count_calls(monkeypatch):
    """A list that grows by one per `PerceiverBackbone.call` (eager runs,
    traces and symbolic builds alike)."""
    calls = []
    original = PerceiverBackbone.call

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PerceiverBackbone, "call", counted)
    return calls


def example_inputs(kind, batch=2):
    rng = np.random.default_rng(0)
    shape = (batch,) + SHAPES[kind]
    if kind == "text":
        return rng.integers(0, 262, shape).astype("int32")
    return rng.normal(size=shape).astype("float32")


def assert_runs_once_per_step(model, x, y, calls):
    """After the first call (trace or build), predict/train steps do not
    run the model again, except eager torch's one run per step."""
    model.predict_on_batch(x)
    del calls[:]
    model.predict_on_batch(x)
    assert len(calls) == CALLS_PER_STEP, "predict_on_batch ran the model again"
    model.train_on_batch(x, y)
    del calls[:]
    model.train_on_batch(x, y)
    assert len(calls) == CALLS_PER_STEP, "train_on_batch rebuilt the model"


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_recommended_models_have_no_unbuilt_layer(kind, count_calls):
    config = recommended_config(
        kind, SHAPES[kind], num_latents=4, latent_dim=16, num_blocks=1,
        num_self_attends_per_block=1,
    )
    model = PerceiverClassifier(PerceiverBackbone(**config), num_classes=3)
    assert unbuilt_layers(model) == []
    assert_runs_once_per_step(
        model, example_inputs(kind), np.array([0, 2]), count_calls
    )


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_hf_models import build
    from test_hf_models import save

    model = build("PerceiverForMaskedLM")
    directory = save(model, tmp_path_factory.mktemp("mlm"))
    return model, directory


def test_removed_or_replaced_preprocessor_is_untracked(
    masked_lm_dir, count_calls
):
    _, directory = masked_lm_dir
    task = PerceiverTask.from_preset(directory)
    old = task.preprocessor
    assert old is not None
    new = type(old).from_config(old.get_config())
    task.preprocessor = new
    layers = list(task._flatten_layers())
    assert not any(layer is old for layer in layers)
    assert any(layer is new for layer in layers)
    task.preprocessor = None
    assert unbuilt_layers(task) == []
    ids = np.random.default_rng(0).integers(0, 262, (2, 24)).astype("int32")
    task.compile(loss=keras.losses.SparseCategoricalCrossentropy(True))
    assert_runs_once_per_step(task, ids, ids, count_calls)


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_from_preset_honours_dtype_on_a_transformers_directory(
    masked_lm_dir, dtype
):
    from test_hf_models import reference
    from test_hf_models import token_inputs

    model, directory = masked_lm_dir
    task = PerceiverTask.from_preset(directory, dtype=dtype)
    task.preprocessor = None  # the inputs below are token ids
    variable_dtype = "float32" if dtype.startswith("mixed") else "bfloat16"
    for layer in (task.backbone, task.backbone.input_adapter, task.decoder):
        assert layer.dtype_policy.name == dtype, layer.name
    assert {v.dtype for v in task.backbone.weights} == {variable_dtype}
    inputs = token_inputs(length=24)
    logits = task.predict_on_batch(
        {"inputs": inputs["inputs"].astype("int32"),
         "padding_mask": inputs["attention_mask"].astype(bool)}
    )
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    expected = reference(model, inputs)["logits"]
    logits = np.asarray(logits, "float32")
    # bfloat16 keeps 8 significant bits: about 2 % of the logits' scale
    # after a few layers; the predicted bytes still agree almost everywhere.
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= 0.05 * scale
    agreement = np.mean(logits.argmax(-1) == expected.argmax(-1))
    assert agreement >= 0.9, agreement


def test_dense_on_a_2d_view_matches_keras_dense():
    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype("float32")
    ours = PerceiverDense(4, activation="gelu")
    theirs = keras.layers.Dense(4, activation="gelu")
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    kernel, bias = ours.get_weights()
    expected = keras.ops.convert_to_numpy(theirs(x))
    assert_close(ours(x), expected, rtol=1e-6)
    # The reference itself, in NumPy (before the activation).
    ours.activation = None
    assert_close(ours(x), x @ kernel + bias, rtol=1e-6)
    assert ours.compute_output_shape((None, 5, 7)) == (None, 5, 4)


def test_dense_with_bfloat16_accumulates_in_float32_on_jax():
    if BACKEND != "jax":
        pytest.skip("float32 accumulation is asked for on JAX only")
    import jax

    x = np.random.default_rng(0).normal(size=(2, 6, 32)).astype("float32")
    layer = PerceiverDense(8, dtype="bfloat16")
    layer.build(x.shape)
    kernel, bias = (np.asarray(w, "float32") for w in layer.get_weights())
    jaxpr = str(jax.make_jaxpr(lambda v: layer(v))(x))
    assert "preferred_element_type=float32" in jaxpr
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = x @ kernel + bias
    # Inputs rounded to bfloat16 (8 bits), the sum exact in float32.
    assert np.abs(np.asarray(out, "float32") - expected).max() <= (
        0.02 * np.abs(expected).max()
    )


def test_fourier_features_under_torch_compile():
    if BACKEND != "torch":
        pytest.skip("torch.compile is torch's")
    import torch

    layer = FourierPositionEncoding(4, max_resolution=(6, 5))
    x = torch.zeros((2, 6, 5, 3))
    compiled = torch.compile(layer, backend="eager")
    out = compiled(x)
    expected = layer.features_for((6, 5))
    assert_close(out, np.broadcast_to(expected, (2,) + expected.shape))
