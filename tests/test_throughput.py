"""What keeps training and inference fast (issue 14), checked by numbers
and by what runs, never by timings.

- No tracked layer is left unbuilt (fresh models, and tasks whose
  preprocessor was removed or replaced): Keras' trainers rebuild a model
  with an unbuilt layer on every `train_on_batch`, and JAX runs it eagerly
  before each `predict_on_batch`. TensorFlow traces the first train step
  once (it was twice). Counting the backbone's `call`s shows it.
- `PerceiverLayerNormalization` (straight to torch's `layer_norm` when
  called eagerly on torch) computes what Keras' LayerNormalization does,
  and Keras' own path takes whatever it would convert; a Dropout of rate 0
  is skipped, one above 0 still drops.
- `PerceiverDense` (2-D view of `[B, N, C]`) computes what Keras' Dense does;
  on JAX with bfloat16 it asks XLA for float32 accumulation, and so do the
  backward pass's products (bfloat16 operands there too).
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
from perceiver_keras.layers.blocks import PerceiverSelfAttentionBlock
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.normalization import PerceiverLayerNormalization
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
    del calls[:]
    model.train_on_batch(x, y)
    if BACKEND == "tensorflow":
        # One trace. It was two while Keras built the optimizer inside the
        # step (`tf.function` traces a function that creates variables
        # again). JAX and torch add a symbolic build's call here.
        assert len(calls) == 1, "the first train_on_batch traced twice"
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


def dense_pair(**kwargs):
    """A `[3, 5, 7]` input, a built PerceiverDense(4) and a Keras Dense(4)
    with the same weights."""
    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype("float32")
    ours = PerceiverDense(4, **kwargs)
    theirs = keras.layers.Dense(4, **kwargs)
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    return x, ours, theirs


@pytest.mark.parametrize("policy, input_dtype, options, direct", [
    ("float32", "float32", {}, True),
    ("bfloat16", "bfloat16", {}, True),
    ("mixed_bfloat16", "bfloat16", {}, True),
    ("mixed_bfloat16", "float32", {}, False),  # Keras casts the input first
    ("float32", "float32", {"center": False}, False),  # no beta
])
def test_layer_norm_matches_keras_layer_norm(policy, input_dtype, options,
                                             direct, monkeypatch):
    rng = np.random.default_rng(0)
    options = dict(options, epsilon=1e-5, dtype=policy)
    ours = PerceiverLayerNormalization(**options)
    reference = keras.layers.LayerNormalization(**options)
    for layer in (ours, reference):
        layer.build((None, 5, 8))
        layer.gamma.assign(1 + rng.normal(size=8) * 0.1)
        if layer.beta is not None:
            layer.beta.assign(rng.normal(size=8) * 0.1)
        rng = np.random.default_rng(0)  # the same weights in both
    keras_calls = []
    keras_call = keras.layers.LayerNormalization.__call__

    def counted(self, *args, **kwargs):
        if self is ours:
            keras_calls.append(1)
        return keras_call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.LayerNormalization, "__call__", counted)
    x = keras.ops.cast(rng.normal(size=(2, 5, 8)) * 3 + 1, input_dtype)
    out, expected = ours(x), reference(x)
    assert keras.backend.standardize_dtype(out.dtype) == \
        keras.backend.standardize_dtype(expected.dtype)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")))
    taken = len(keras_calls) == 0
    assert taken == (direct and BACKEND == "torch")
    if BACKEND == "torch":  # the direct path's gradients
        import torch

        grads = []
        for layer in (ours, reference):
            xt = x.detach().clone().requires_grad_(True)
            y = layer(xt).float()
            weights = [w.value for w in layer.trainable_weights]
            grads.append(torch.autograd.grad((y * y).sum(), [xt] + weights))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_task_with_an_unbuilt_preprocessor_layer_traces_once(monkeypatch):
    # Perceiver AR's tokenizer stays unbuilt through training (it holds no
    # weights): the optimizer is still built before the first TensorFlow
    # trace (see `assert_runs_once_per_step`).
    if BACKEND != "tensorflow":
        pytest.skip("the double trace is TensorFlow's")
    from perceiver_keras.models.perceiver_ar import perceiver_ar_backbone
    from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm import (
        PerceiverARCausalLM,
    )
    from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E501
        PerceiverARCausalLMPreprocessor,
    )
    from perceiver_keras.models.perceiver_ar.perceiver_ar_tokenizer import (
        PerceiverARTokenizer,
    )

    backbone_class = perceiver_ar_backbone.PerceiverARBackbone
    backbone = backbone_class(vocabulary_size=262, hidden_dim=8,
                              num_layers=1, num_heads=2,
                              max_sequence_length=12, max_latents=4)
    lm = PerceiverARCausalLM(backbone, preprocessor=(
        PerceiverARCausalLMPreprocessor(PerceiverARTokenizer(),
                                        sequence_length=10, num_latents=4)))
    lm.compile()
    calls = []
    original = backbone_class.call
    monkeypatch.setattr(backbone_class, "call", lambda self, *args, **kw: (
        calls.append(1), original(self, *args, **kw))[1])
    lm.train_on_batch(["hello world, hello", "a"])
    assert unbuilt_layers(lm.preprocessor)  # what had to be set aside
    assert len(calls) == 1, "the first train_on_batch traced twice"


def test_blocks_skip_dropout_at_rate_zero_only():
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")
    dropped = PerceiverSelfAttentionBlock(num_heads=2, dropout=0.5)
    kept = PerceiverSelfAttentionBlock(num_heads=2)
    dropped.build(x.shape)
    kept.build(x.shape)
    kept.set_weights(dropped.get_weights())
    evaluated = keras.ops.convert_to_numpy(dropped(x, training=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(kept(x, training=True)), evaluated)
    trained = keras.ops.convert_to_numpy(dropped(x, training=True))
    assert np.abs(trained - evaluated).max() > 0.1


def test_dense_on_a_2d_view_matches_keras_dense():
    x, ours, theirs = dense_pair(activation="gelu")
    kernel, bias = ours.get_weights()
    expected = keras.ops.convert_to_numpy(theirs(x))
    assert_close(ours(x), expected, rtol=1e-6)
    # The reference itself, in NumPy (before the activation).
    ours.activation = None
    assert_close(ours(x), x @ kernel + bias, rtol=1e-6)
    assert ours.compute_output_shape((None, 5, 7)) == (None, 5, 4)


def test_dense_under_mixed_precision_and_in_a_functional_model():
    # On torch a built PerceiverDense skips Keras' `Layer.__call__`; the
    # compute dtype, gradients and symbolic use must not notice.
    x, ours, theirs = dense_pair(dtype="mixed_bfloat16")
    out = ours(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(ours.kernel.dtype) == "float32"
    expected = np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(theirs(x), "float32")))
    assert np.abs(np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(out, "float32"))) - expected).max() <= (
        0.02 * np.abs(expected).max())
    inputs = keras.Input((5, 7))
    model = keras.Model(inputs, PerceiverDense(3, name="head")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = model.get_layer("head").get_weights()[0].copy()
    model.train_on_batch(x, np.zeros((3, 5, 3), "float32"))
    assert model.output_shape == (None, 5, 3)
    # One SGD step on the mean squared error from a zero bias:
    # kernel -= 0.1 * d(mean)/d(kernel).
    grad = 2 * np.einsum("bnc,bnu->cu", x, x @ before) / (3 * 5 * 3)
    assert_close(model.get_layer("head").get_weights()[0],
                 before - 0.1 * grad, rtol=1e-5)


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


@pytest.mark.parametrize("subscripts", [
    "nc,cu->nu", "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd",
    # Batch axes apart: XLA:CPU cannot run these as they are.
    "bqhd,bhqk->bkhd", "bhqk,bqhd->bhkd",
])
def test_half_product_and_its_gradient_match_float32_on_jax(subscripts):
    if BACKEND != "jax":
        pytest.skip("float32 accumulation is asked for on JAX only")
    import jax
    import jax.numpy as jnp

    from perceiver_keras.layers.dense import half_product

    sizes = dict(n=6, c=5, u=4, b=2, q=3, k=7, h=2, d=4)
    (a_indices, b_indices), out = subscripts.split("->")[0].split(","), (
        subscripts.split("->")[1])
    rng = np.random.default_rng(0)
    # Values exact in bfloat16, so only the accumulation could differ.
    a, b = (np.round(rng.normal(size=[sizes[i] for i in indices]) * 8) / 8
            for indices in (a_indices, b_indices))
    weight = rng.normal(size=[sizes[i] for i in out])

    def loss(f, x, y):
        return jnp.sum(f(x, y) * weight)

    half = jax.jit(jax.grad(lambda x, y: loss(half_product(subscripts), x, y),
                            (0, 1)))
    da, db = half(a.astype("bfloat16"), b.astype("float32"))
    reference = jax.grad(lambda x, y: loss(
        lambda p, r: jnp.einsum(subscripts, p, r), x, y), (0, 1))(a, b)
    out = half_product(subscripts)(a.astype("bfloat16"), b.astype("bfloat16"))
    assert str(out.dtype) == "float32"
    assert_close(out, np.einsum(subscripts, a, b), rtol=1e-6)
    # `a`'s gradient in bfloat16, `b`'s in its own float32: each one
    # product of a bfloat16-rounded cotangent, accumulated in float32.
    assert (str(da.dtype), str(db.dtype)) == ("bfloat16", "float32")
    for grad, expected in zip((da, db), reference):
        scale = np.abs(np.asarray(expected)).max()
        assert np.abs(np.asarray(grad, "float32") - expected).max() <= (
            0.02 * scale)


def test_half_product_refuses_an_index_summed_in_one_operand():
    from perceiver_keras.layers.dense import einsum_transposes

    assert einsum_transposes("nc,cu->nu") == ("nu,cu->nc", "nc,nu->cu")
    with pytest.raises(ValueError, match="subscripts"):
        einsum_transposes("nc,u->nu")


def test_mixed_bfloat16_backward_products_are_bfloat16_on_jax():
    if BACKEND != "jax":
        pytest.skip("float32 accumulation is asked for on JAX only")
    import jax

    x = example_inputs("point_set", batch=4)
    labels = np.arange(4) % 3

    def gradients(policy):
        keras.utils.set_random_seed(0)
        model = PerceiverClassifier(PerceiverBackbone(**recommended_config(
            "point_set", SHAPES["point_set"], dtype=policy)), num_classes=3,
            dtype=policy)
        model(x)
        trainable = [v.value for v in model.trainable_variables]
        others = [v.value for v in model.non_trainable_variables]

        def loss(weights):
            logits, _ = model.stateless_call(weights, others, x)
            return keras.losses.sparse_categorical_crossentropy(
                labels, logits.astype("float32"), from_logits=True).mean()

        return jax.make_jaxpr(jax.grad(loss))(trainable), jax.grad(loss)(
            trainable)

    from jax_time_breakdown import products_of  # benchmarks/ (on sys.path)

    jaxpr, grads = gradients("mixed_bfloat16")
    dtypes = [(str(lhs.dtype), str(rhs.dtype))
              for lhs, rhs, _ in products_of(jaxpr.jaxpr)]
    # Forward and backward: every product of the model reads bfloat16.
    assert len(dtypes) > 30
    assert set(dtypes) == {("bfloat16", "bfloat16")}, set(dtypes)
    _, reference = gradients("float32")
    assert all(str(g.dtype) == "float32" for g in grads)  # float32 weights
    flat = np.concatenate([np.ravel(g) for g in grads])
    expected = np.concatenate([np.ravel(g) for g in reference])
    # bfloat16 products: the gradient points the same way as float32's.
    cosine = flat @ expected / np.linalg.norm(flat) / np.linalg.norm(expected)
    assert cosine > 0.99, cosine


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


# --- the benchmark's helpers (benchmarks/throughput/) -------------------------

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from throughput import measure  # noqa: E402
from throughput import report  # noqa: E402
from throughput import workloads  # noqa: E402
from throughput.keras_runner import step_intervals  # noqa: E402
from throughput.main import failed_checks  # noqa: E402


@pytest.fixture(scope="module")
def small_backbone():
    return PerceiverBackbone(
        inputs_shape=(None, 3), num_latents=4, latent_dim=8,
        num_self_attends_per_block=1, num_cross_attend_heads=1,
    )


def test_benchmark_counts_runs_and_fails_an_eager_model(small_backbone):
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    model = small_backbone
    before = vars(type(model)).get("call")
    try:
        _, record = measure.time_calls(lambda: model.predict_on_batch(x), 3,
                                       1e9, model=model)
        assert record["traces"] >= 1  # the trace, or torch's eager run
        assert record["timed_runs"] == measure.allowed_runs(BACKEND, 3)
        measure.check_runs(BACKEND, record["timed_runs"], 3, "compiled")
        # Eager execution (Keras' slow path): the model's call runs on
        # every predict_on_batch.
        model.run_eagerly = True
        model.predict_function = None
        _, record = measure.time_calls(lambda: model.predict_on_batch(x), 3,
                                       1e9, model=model)
    finally:
        model.run_eagerly = False
        model.predict_function = None
    assert record["timed_runs"] == 3
    if BACKEND == "torch":  # always eager: nothing to catch (n/a)
        measure.check_runs(BACKEND, 3, 3, "eager")
    else:
        with pytest.raises(measure.RetraceError, match="ran 3 times in 3"):
            measure.check_runs(BACKEND, record["timed_runs"], 3, "eager")
    # The class is restored: no counting outside the context.
    assert vars(type(model)).get("call") is before


def test_benchmark_time_calls_stops_at_the_budget(monkeypatch):
    clock = iter(range(0, 1000, 10))  # every perf_counter() is 10 s later
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    calls = []
    output, record = measure.time_calls(lambda: calls.append(1) or "out",
                                        repeats=5, budget_s=25)
    # Warm-up, then 10 s runs while the next stays within 25 s: two.
    assert output == "out" and len(calls) == 3
    assert record["first_s"] == 10 and record["times_s"] == [10, 10]
    assert record["median_s"] == 10 and "traces" not in record


def test_benchmark_agreement_and_bfloat16_agreement():
    ref = np.array([[1.0, 3.0, -2.0], [0.5, 0.1, 0.2]])
    exact = measure.agreement(ref + 2e-5, ref)
    assert exact["scale"] == 3.0 and exact["agrees"]  # 2e-5 <= 2e-5 x 3
    assert not measure.agreement(ref + 1e-4, ref)["agrees"]
    low = measure.low_precision_agreement(
        np.array([[1.0, 2.9, -2.0], [0.0, 0.3, 0.2]]), ref)
    assert low["max_diff"] == pytest.approx(0.5)
    assert low["top1_agreement"] == 0.5 and low["agrees"] is None
    assert measure.agreement(ref[:1], ref)["agrees"] is False


def test_benchmark_workloads_and_flops():
    quick = workloads.workload_specs(quick=True)
    full = workloads.workload_specs(quick=False)
    assert quick["vision-fourier"]["config"]["num_latents"] == 64
    assert full["vision-fourier"]["config"]["num_latents"] == 512
    assert workloads.WORKLOADS["vision-fourier"]["config"]["num_latents"] \
        == 512  # not modified by --quick
    assert quick["fit-steps"]["steps"] == 4
    assert workloads.keras_dtype(full["vision-fourier"], "bfloat16") == \
        "bfloat16"
    assert workloads.keras_dtype(full["image-training"], "bfloat16") == \
        "mixed_bfloat16"
    assert workloads.keras_dtype(full["image-training"], "float32") is None
    # One layer by hand: 2 queries of 4, 3 keys of 5, qk 6, v 7, out 4.
    assert workloads.attention_layer_flops(2, 3, 4, 5, 6, 7, 4, 1) == (
        2 * 2 * 4 * 6 + 2 * 3 * 5 * 13 + 2 * 2 * 7 * 4   # projections
        + 2 * 2 * 3 * 6 + 2 * 2 * 3 * 7                   # QK^T, softmax V
        + 4 * 2 * 4 * 4)                                  # MLP
    assert workloads.training_step_flops(full["image-training"], 2) == (
        6 * workloads.forward_flops(full["image-training"]))


def test_benchmark_flop_count_matches_torch_on_transformers():
    pytest.importorskip("transformers")
    import torch
    import transformers

    from throughput.transformers_runner import MatmulFlopCounter

    spec = dict(workloads.WORKLOADS["encoder-scaling"], config=dict(
        d_model=16, num_latents=8, d_latents=32, num_blocks=2,
        num_self_attends_per_block=2, num_self_attention_heads=2,
        num_cross_attention_heads=2))
    model = transformers.PerceiverModel(
        transformers.PerceiverConfig(**spec["config"])).eval()
    with torch.no_grad(), MatmulFlopCounter() as counter:
        model(inputs=torch.zeros(1, 50, 16))
    assert counter.total == workloads.forward_flops(spec, 50)


def fit_row(backend, kind, dtype, median, runs=0):
    return dict(fit=f"{kind} {dtype}", dtype=dtype, backend=backend,
                params=10, first_s=3.0, times_s=[median] * 3,
                median_s=median, traces=2, timed_runs=runs,
                allowed_runs=0, final_loss=1.0, load=0.5)


def test_benchmark_fit_table_and_failed_rows():
    spec = dict(workloads.WORKLOADS["fit-steps"], kinds=["image"])
    results = {
        "jax": {"rows": [fit_row("jax", "image", "float32", 0.1),
                         fit_row("jax", "image", "mixed_bfloat16", 0.05)]},
        "torch": {"rows": [fit_row("torch", "image", "float32", 0.4)]},
        "tensorflow": {"error": "Traceback ...\nthroughput.measure."
                                "RetraceError: fit image float32 on "
                                "tensorflow: ran 11 times"},
    }
    table = report.fit_table(spec, results).splitlines()
    jax32, torch32, jax16 = (
        [c.strip() for c in line.split("|")[1:-1]] for line in table[2:5])
    assert jax32[:3] == ["image", "float32", "jax"] and jax32[7] == "1.00x"
    assert torch32[2] == "torch" and torch32[7] == "0.25x"  # 0.1 / 0.4
    assert jax16[1] == "mixed_bfloat16" and jax16[8] == "2.00x"
    assert "FAILED: throughput.measure.RetraceError" in table[5]
    assert failed_checks({"fit-steps": results}) == ["fit-steps tensorflow"]
    assert step_intervals(1.0, [1.5, 3.0, 3.25]) == [0.5, 1.5, 0.25]


def test_benchmark_matmul_table_reads_both_result_formats():
    new = report.matmul_table({
        "matmul_gflops": {"float32": {"torch 64": 1.0},
                          "bfloat16": {"torch 64": 2.5}},
        "limit_gflops": {"float32": 1.0, "bfloat16": 2.5}})
    assert "| bfloat16 | **limit** (best) | **2.5** |" in new
    old = report.matmul_table({"matmul_gflops": {"numpy 64": 3.0},
                               "limit_gflops": 3.0})
    assert "| float32 | numpy 64 | 3.0 |" in old
    assert report.limit_for({"float32": 1.0}, "bfloat16") == 1.0
    assert report.limit_for(3.0, "bfloat16") == 3.0


def test_benchmark_matmul_limit_measures_the_requested_dtypes_only():
    from throughput.machine import machine_child

    job = dict(threads=1, matmul_sizes={"32": 1})
    only32 = machine_child(dict(job, dtypes=["float32"]))
    assert list(only32["matmul_gflops"]) == ["float32"]
    assert list(only32["limit_gflops"]) == ["float32"]
    assert "torch 32" in only32["matmul_gflops"]["float32"]
    both = machine_child(dict(job, dtypes=["float32", "bfloat16"]))
    assert sorted(both["limit_gflops"]) == ["bfloat16", "float32"]
