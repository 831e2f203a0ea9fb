"""keras-hub's conformance suite on the Perceiver AR backbone and CausalLM.

`run_backbone_test` (serialization, eager and compiled predict, tf.data,
precision policies, dtype maps), `run_model_saving_test` and
`run_preset_test` on the backbone; `run_task_test` (preprocessor output
structure, predict and fit on strings, tf.data and split preprocessing, no
default compile), the saving and preset tests on the CausalLM.
"""

import keras
import numpy as np
import pytest

from harness import hub
from harness import init_kwargs_of
from perceiver_keras import PerceiverARBackbone
from perceiver_keras import PerceiverARCausalLM
from perceiver_keras import PerceiverARCausalLMPreprocessor
from perceiver_keras import PerceiverARTokenizer

KWARGS = dict(vocabulary_size=262, hidden_dim=8, num_layers=1, num_heads=2,
              max_sequence_length=12, max_latents=4)
DEEPMIND_KWARGS = dict(
    KWARGS, activation="squared_relu", use_qkv_bias=True, use_mlp_bias=True,
    mask_rules="deepmind", latent_query="linear", latents_in_keys=False,
    position_embedding="sinusoidal", position_start=1, final_norm=True,
    tie_embeddings=False, rotary_frequency_spacing="linspace",
)


def _inputs():
    ids = np.random.default_rng(0).integers(6, 262, (2, 10)).astype("int32")
    mask = np.ones((2, 10), "int32")
    mask[1, :3] = 0
    return {"token_ids": ids, "padding_mask": mask}


@pytest.mark.parametrize("kwargs", [KWARGS, DEEPMIND_KWARGS],
                         ids=["krasserm", "deepmind"])
def test_keras_hub_backbone_test(kwargs):
    hub.run_backbone_test(PerceiverARBackbone, dict(kwargs), _inputs(),
                          (2, 4, 8))


def test_keras_hub_backbone_saving_and_preset_tests(tmp_path):
    data = _inputs()
    hub.run_model_saving_test(PerceiverARBackbone, dict(KWARGS), data)
    backbone = PerceiverARBackbone(**KWARGS)
    backbone.save_to_preset(str(tmp_path))
    hub.run_preset_test(PerceiverARBackbone, str(tmp_path), data,
                        expected_output=backbone(data))


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    preprocessor = PerceiverARCausalLMPreprocessor(
        PerceiverARTokenizer(), sequence_length=10, num_latents=4)
    return PerceiverARCausalLM(PerceiverARBackbone(**KWARGS),
                               preprocessor=preprocessor)


TEXTS = ["the cat sat", "on the mat and more", "a", "dog"]


def test_keras_hub_task_test(task):
    hub.run_task_test(PerceiverARCausalLM, init_kwargs_of(task), (TEXTS,),
                      expected_output_shape=(4, 4, 262), batch_size=4)


def test_keras_hub_task_saving_and_preset_tests(task, tmp_path):
    x = task.preprocessor(TEXTS)[0]
    hub.run_serialization_test(task)
    kwargs = {**init_kwargs_of(task), "preprocessor": None}
    hub.run_model_saving_test(PerceiverARCausalLM, kwargs, x)
    task.save_to_preset(str(tmp_path))
    hub.run_preset_test(PerceiverARCausalLM, str(tmp_path), x,
                        expected_output=task(x))


def test_functional_backbones_of_other_families_still_work():
    """Building a functional keras-hub backbone no longer breaks this one
    (or the other way round): both are functional now."""
    from perceiver_keras import PerceiverBackbone
    from perceiver_keras import PerceiverArrayAdapter

    other = PerceiverBackbone(
        inputs_shape=(6, 2), input_adapter=PerceiverArrayAdapter(
            num_bands=2, max_resolution=(6,)),
        num_latents=4, latent_dim=8, num_self_attends_per_block=1,
        num_self_attend_heads=2)
    backbone = PerceiverARBackbone(**KWARGS)
    again = PerceiverBackbone.from_config(other.get_config())
    assert backbone(_inputs()).shape == (2, 4, 8)
    x = {"inputs": np.zeros((1, 6, 2), "float32"),
         "padding_mask": np.ones((1, 6), bool)}
    assert again(x).shape == other(x).shape
