"""`PerceiverResamplerBackbone` / `PerceiverResamplerEncoder`: training,
presets, configs and input checks."""

import keras
import numpy as np
import pytest
from keras_hub.src.tests.test_case import TestCase

from conftest import assert_close
from conftest import to_numpy
from harness import load_script
from perceiver_keras import PerceiverResamplerBackbone
from perceiver_keras import PerceiverResamplerEncoder


def example_module():
    return load_script("resampler_set_pooling", folder="examples")


def small_backbone(**overrides):
    options = dict(feature_dim=6, num_latents=3, num_layers=1, num_heads=2,
                   head_dim=4, hidden_dim=8, num_key_value_heads=1,
                   norm="rms_norm", norm_epsilon=1e-6, mlp_activation="silu",
                   gated_mlp=True)
    return PerceiverResamplerBackbone(**{**options, **overrides})


def test_set_pooling_head_beats_mean_pooling():
    example = example_module()
    train = example.cluster_sets(512, seed=0)
    test = example.cluster_sets(256, seed=1)
    baseline = example.mean_pool_linear_accuracy(train, test)
    accuracy = example.resampler_accuracy(train, test, epochs=8)
    assert baseline < 0.7, baseline
    assert accuracy > 0.9, accuracy
    assert accuracy > baseline + 0.2


def test_preset_round_trip(tmp_path):
    task = PerceiverResamplerEncoder(small_backbone(), output_dim=5)
    x = np.random.default_rng(0).normal(size=(2, 7, 6)).astype("float32")
    mask = np.array([[1] * 7, [1] * 3 + [0] * 4], bool)
    expected = to_numpy(task({"inputs": x, "padding_mask": mask}))
    assert expected.shape == (2, 3, 5)
    task.save_to_preset(str(tmp_path / "preset"))
    reloaded = PerceiverResamplerEncoder.from_preset(str(tmp_path / "preset"))
    assert reloaded.get_config() == task.get_config()
    assert_close(reloaded({"inputs": x, "padding_mask": mask}), expected)
    rebuilt = PerceiverResamplerEncoder.from_config(task.get_config())
    assert rebuilt.count_params() == task.count_params()


def test_builtin_architectures():
    backbone = PerceiverResamplerBackbone.from_preset(
        "idefics_9b_resampler", load_weights=False, num_layers=1)
    # 64 latents + one block (3 LayerNorms, 4 projections, MLP) + final LN.
    width, inner = 1280, 16 * 96
    block = 3 * 2 * width + 4 * width * inner + 2 * width * 4 * width
    assert backbone.count_params() == 64 * width + block + 2 * width
    with pytest.raises(ValueError, match="convert_resampler.py"):
        PerceiverResamplerEncoder.from_preset("idefics2_8b_resampler")


def test_bad_inputs_are_named():
    task = PerceiverResamplerEncoder(small_backbone())
    with pytest.raises(ValueError, match="inputs"):
        task({"inputs": np.zeros((2, 4, 5), "float32")})
    with pytest.raises(ValueError, match="padding_mask"):
        task({"inputs": np.zeros((2, 4, 6), "float32"),
              "padding_mask": np.ones((2, 5), bool)})
    with pytest.raises(ValueError, match="feature_dim"):
        PerceiverResamplerBackbone(feature_dim=0)


class ResamplerModelTest(TestCase):
    def test_keras_hub_backbone_checks(self):
        x = np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")
        self.run_backbone_test(
            cls=PerceiverResamplerBackbone,
            init_kwargs=small_backbone().get_config(),
            # Backend tensors: Functional.compute_output_spec needs them.
            input_data={
                "inputs": keras.ops.convert_to_tensor(x),
                "padding_mask": keras.ops.ones((2, 5), "bool"),
            },
            expected_output_shape=(2, 3, 8),
            run_quantization_check=False,
        )

    def test_keras_hub_task_serialization(self):
        # `run_task_test` needs a preprocessor; this task takes features.
        task = PerceiverResamplerEncoder(small_backbone(), output_dim=2)
        self.run_serialization_test(task)
