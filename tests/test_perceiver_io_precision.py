"""Dtype policies and int8 quantization of Perceiver IO models.

Policies (`mixed_float16`, `mixed_bfloat16`, `bfloat16`) must reach every
sublayer of every model kind, and float outputs must have the policy's
compute dtype, on every backend (keras-hub's own precision check skips
torch on CPU). On converted DeepMind fixtures, the outputs under
`mixed_bfloat16` and after `quantize("int8")` are measured against the
float32 outputs (which match DeepMind's to 2e-5) and held to stated
tolerances.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from harness import check_policies
from harness import policy_error
from harness import quantized_error
from harness import record
from harness import with_dtype
from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.conversion.deepmind import checkpoint_tensors
from perceiver_keras.conversion.deepmind import kind_module
from perceiver_keras.utils.deepmind_checkpoint import load_deepmind_checkpoint
from test_perceiver_io_conformance import BACKBONES
from test_perceiver_io_conformance import TASKS
from perceiver_keras import PerceiverBackbone

FIXTURES = Path(__file__).parent / "fixtures" / "deepmind"

# Scaled max|diff| (max|out - float32 out| / max(1, max|float32 out|)) of
# the converted fixtures, measured on CPU (the same on all three backends to
# 3 digits): mixed_bfloat16: image_fourier 0.0205, mlm 0.0153; int8:
# image_fourier 0.0248, mlm 0.0292. bfloat16 keeps 8 bits of mantissa
# (relative step 2^-8 = 0.0039); a few such roundings through the attention
# layers give ~1e-2. Keras' int8 Dense quantizes both its kernel (per output
# channel) and its inputs (per row) with a relative step of 1/127 = 0.0079,
# twice bfloat16's, so the same bound holds with about half the margin.
MIXED_BFLOAT16_TOLERANCE = 0.05
INT8_TOLERANCE = 0.05


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_policies_reach_every_backbone_sublayer(name):
    kwargs, data, _ = BACKBONES[name]()
    check_policies(
        lambda dtype: PerceiverBackbone(**with_dtype(kwargs, dtype)), data
    )


def _task_factory(task):
    """Rebuilds `task` from its config under another dtype policy."""
    config = task.get_config()
    config["preprocessor"] = None

    def build(dtype):
        backbone = dict(config["backbone"])
        backbone["config"] = {**backbone["config"], "dtype": dtype}
        return task.__class__.from_config({**config, "backbone": backbone})

    return build


@pytest.mark.parametrize("name", sorted(TASKS))
def test_policies_reach_every_task_sublayer(name):
    task, train_data, _ = TASKS[name]()
    x = train_data[0]
    if task.preprocessor is not None:
        x = keras.utils.unpack_x_y_sample_weight(task.preprocessor(x))[0]
    check_policies(_task_factory(task), x)


def converted(kind):
    """The fixture of `kind` converted: `(task, fixture inputs)`."""
    folder = FIXTURES / f"{kind}-public"
    config = json.loads((folder / "config.json").read_text())
    module = kind_module(kind)
    params, state = load_deepmind_checkpoint(folder / config["checkpoint"])
    task = module.build_task(config["deepmind_config"])
    rows = module.weight_rows(task, config["deepmind_config"])
    assign_weights(task, rows, checkpoint_tensors(params, state))
    inputs = dict(np.load(folder / "inputs.npz"))
    if kind == "mlm":
        x = {"inputs": inputs["token_ids"],
             "padding_mask": inputs["input_mask"].astype(bool)}
    else:
        x = inputs["images"]
    return task, x


@pytest.fixture(scope="module", params=["image_fourier", "mlm"])
def converted_fixture(request):
    return (request.param, *converted(request.param))


def test_converted_model_under_mixed_bfloat16(converted_fixture):
    kind, task, x = converted_fixture
    error = policy_error(task, x, "mixed_bfloat16")
    record(f"{kind} mixed_bfloat16 scaled max|diff|", error)
    assert error <= MIXED_BFLOAT16_TOLERANCE
    # Not vacuous: the policy did change the arithmetic.
    assert error > 1e-4


def test_converted_model_quantized_to_int8(converted_fixture):
    kind, task, x = converted_fixture
    error = quantized_error(task, x, "int8")
    record(f"{kind} int8 scaled max|diff|", error)
    assert 1e-5 < error <= INT8_TOLERANCE
