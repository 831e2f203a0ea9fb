"""Training on several devices with Keras' and the backends' own engines.

JAX: `keras.distribution.DataParallel` / `ModelParallel` (with the
backbones' `get_layout_map`) on 8 virtual CPU devices; TensorFlow:
`MirroredStrategy` over 2 logical CPU devices; PyTorch: DDP (gloo) over 2
processes. Device counts are fixed when a backend starts, so each check runs
in a subprocess (tests/distribution_<backend>_check.py) that prints what it
measured; the tests here assert. Each runs on its own backend only.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND = keras.config.backend()
# One float32 training run against another: round-off only.
TOLERANCE = 2e-5
# Weights after the SGD steps: sharded reductions sum in another order and
# each step's gradient round-off feeds the next step's forward pass (model
# parallel on 8 devices, JAX 0.10.2: 3.0e-5, while training moves the
# weights by 0.18).
WEIGHT_TOLERANCE = 1e-4


def run_check(backend, *arguments):
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join(
                   [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, f"distribution_{backend}_check.py"),
         *arguments],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_training(losses, reference):
    assert len(losses) == len(reference) >= 2
    np.testing.assert_allclose(losses, reference, rtol=TOLERANCE)


only = {name: pytest.mark.skipif(BACKEND != name, reason=f"{name} only")
        for name in ("jax", "tensorflow", "torch")}


@pytest.fixture(scope="module")
def jax_report():
    return run_check("jax")


# Written out by hand from the rules (not read from the map): which mesh
# axis each dimension of a few weights is split over on a (2, 4) mesh.
EXPECTED_SPECS = {
    "perceiver_io": {
        "latents/embeddings": [None, "model"],
        "input_adapter/token_embedding/embeddings": [None, "model"],
        "self_attend_0/attention/query/kernel": [None, "model"],
        "self_attend_0/attention/query/bias": ["model"],
        "self_attend_0/attention/output/kernel": ["model"],
        "self_attend_0/mlp/hidden/kernel": [None, "model"],
        "self_attend_0/mlp/output/kernel": ["model"],
        "cross_attend_0/mlp/hidden/kernel": [None, "model"],
        "cross_attend_0/attention/query/kernel": [],  # input-wide: replicated
        "cross_attend_0/attention/key/kernel": [],
        "self_attend_0/attention_norm/gamma": [],
    },
    "perceiver_ar": {
        "token_embedding/embeddings": [None, "model"],
        "position_embedding/embeddings": [None, "model"],
        "cross_attention_0/attention/key/kernel": [None, "model"],
        "self_attention_1/attention/value/kernel": [None, "model"],
        "self_attention_1/attention/output/kernel": ["model"],
        "self_attention_1/mlp/output/kernel": ["model"],
        "logits/kernel": ["model"],
        "logits/bias": [],
    },
    "hip": {
        "block_1/latents": [None, "model"],
        "embedding_image/position_encoding": [None, "model"],
        "block_1/cross_attention/attention/query/kernel": [None, "model"],
        "block_2/self_attention_0/mlp/hidden/bias": ["model"],
        "reconstruction_head/attention/output/kernel": ["model"],
        "embedding_image/embed/kernel": [],
        "unembedding_audio/kernel": [],
    },
    "resampler": {
        "resampler/latents": [None, "model"],
        "input_projection/kernel": [None, "model"],
        "resampler/block_0/attention/key/kernel": [None, "model"],
        "resampler/block_0/mlp/gate/kernel": [None, "model"],
        "resampler/block_0/mlp/output/kernel": ["model"],
        "resampler/output_norm/scale": [],
    },
}


@only["jax"]
@pytest.mark.parametrize("family", sorted(EXPECTED_SPECS))
def test_layout_map_places_weights_as_it_says(jax_report, family):
    assert jax_report["num_devices"] == 8
    weights = jax_report["layouts"][family]
    by_path = {w["path"]: w for w in weights}
    for path, spec in EXPECTED_SPECS[family].items():
        assert by_path[path]["spec"] == spec, path
    sharded = 0
    for w in weights:
        mapped = [a for a in (w["map"] or [])]
        while mapped and mapped[-1] is None:
            mapped.pop()
        assert w["spec"] == mapped, w["path"]
        assert w["num_devices"] == 8, w["path"]
        # Each device holds a quarter of a split axis, all of the others.
        expected = [n // 4 if axis == "model" else n for n, axis in
                    zip(w["shape"], w["spec"] + [None] * len(w["shape"]))]
        assert w["shard_shape"] == expected, w["path"]
        sharded += bool(w["spec"])
    assert sharded >= 6


@only["jax"]
@pytest.mark.parametrize("task", ["classifier", "causal_lm"])
def test_fit_under_jax_distributions_equals_one_device(jax_report, task):
    report = jax_report["fit"][task]
    assert report["weights_moved"] > 1e-2  # training changed the weights
    for name in ("data_parallel", "model_parallel"):
        assert_same_training(report[name], report["one_device"])
        assert report[name + "_max_weight_diff"] <= WEIGHT_TOLERANCE, name
        assert report[name + "_devices"] == 8
    assert report["data_parallel_sharded"] == 0  # replicated
    assert report["model_parallel_sharded"] >= 10


@only["jax"]
def test_get_layout_map_rejects_a_mesh_without_the_named_axes():
    from perceiver_keras import PerceiverBackbone

    mesh = keras.distribution.DeviceMesh(
        (1,), ("data",), keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="`model_parallel_dim_name` must be "
                       r"one of the mesh's axis names \['data'\]"):
        PerceiverBackbone.get_layout_map(mesh)
    with pytest.raises(ValueError, match="`device_mesh` must be a"):
        PerceiverBackbone.get_layout_map((2, 4))


@only["tensorflow"]
def test_mirrored_strategy_equals_one_device():
    report = run_check("tensorflow")
    assert report["replicas"] == 2
    for task in ("classifier", "causal_lm"):
        entry = report[task]
        assert entry["weights_moved"] > 1e-2
        assert_same_training(entry["mirrored"], entry["one_device"])
        assert entry["mirrored_max_weight_diff"] <= WEIGHT_TOLERANCE, task
        assert entry["mirrored_variables"] == entry["num_weights"]


@only["torch"]
def test_distributed_data_parallel_equals_one_process():
    report = run_check("torch")
    assert report["num_parameters"] == report["num_weights"] > 30
    assert report["weights_moved"] > 1e-2
    assert_same_training(report["ddp"], report["one_device"])
    assert report["ddp_max_weight_diff"] <= TOLERANCE
