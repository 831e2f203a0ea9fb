"""keras-hub's conformance suite on the HiP and resampler families.

The same checks `test_perceiver_io_conformance.py` runs on Perceiver IO:
keras-hub's `run_backbone_test` (serialization, eager and compiled
predict, tf.data, precision policies, quantization), `run_model_saving_test`
and `run_preset_test` on each backbone, and `run_task_test` /
`run_serialization_test` / saving / preset tests on each task. Tiny
configurations: the whole file must stay well under a minute per backend.
"""

import numpy as np
import pytest

from harness import PassThroughPreprocessor
from harness import check_task_saving_and_preset
from harness import hub
from harness import init_kwargs_of
from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.hip.hip_classifier import HiPClassifier
from perceiver_keras.models.hip.hip_masked_autoencoder import (
    HiPMaskedAutoencoder,
)
from perceiver_keras.models.hip.hip_presets import small_config
from perceiver_keras.models.resampler.resampler_backbone import (
    PerceiverResamplerBackbone,
)
from perceiver_keras.models.resampler.resampler_encoder import (
    PerceiverResamplerEncoder,
)

rng = np.random.default_rng(0)


def _floats(*shape):
    return rng.normal(size=shape).astype("float32")


HIP = small_config(
    {"image": (12, 3), "audio": (6, 2)}, 2, z_index_dim=[4, 4, 4],
    num_z_channels=[8, 16, 8], num_embedding_channels=8,
    num_self_attend_heads=[2, 2, 2],
)
HIP_LABEL = {**HIP, "modalities": {"image": (12, 3), "label": (1, 3)},
             "label_modalities": ["label"]}
RESAMPLER = dict(feature_dim=6, num_latents=3, num_layers=1, num_heads=2,
                 head_dim=4)
IDEFICS2 = dict(RESAMPLER, hidden_dim=8, num_key_value_heads=1,
                norm="rms_norm", norm_epsilon=1e-6, mlp_activation="silu",
                gated_mlp=True)


def _hip_data(n=2, label=False):
    x = {"image": _floats(n, 12, 3)}
    if label:
        x["label"] = np.eye(3, dtype="float32")[rng.integers(0, 3, n)][:,
                                                                    None]
    else:
        x["audio"] = _floats(n, 6, 2)
    return x


def _hip_shapes(kwargs, n=2):
    backbone = HiPBackbone(**kwargs)
    return {k: (n, *v.shape[1:]) for k, v in backbone.output.items()}


BACKBONES = {
    # name: () -> (class, constructor kwargs, input data, output shape)
    "hip": lambda: (HiPBackbone, HIP, _hip_data(), _hip_shapes(HIP)),
    "hip_class_bottleneck": lambda: (
        HiPBackbone, HIP_LABEL, _hip_data(label=True),
        _hip_shapes(HIP_LABEL),
    ),
    "hip_perceiver_io": lambda: (
        HiPBackbone,
        dict(modalities={"image": (12, 3)}, z_index_dim=4, num_z_channels=8,
             num_self_attends_per_block=1, num_embedding_channels=8),
        {"image": _floats(2, 12, 3)},
        {"reconstruction/image": (2, 12, 3), "latents/image": (2, 4, 8),
         "block_0": (2, 1, 4, 8)},
    ),
    "resampler_flamingo": lambda: (
        PerceiverResamplerBackbone, RESAMPLER, _floats(2, 5, 6), (2, 3, 6),
    ),
    "resampler_idefics2_masked": lambda: (
        PerceiverResamplerBackbone, IDEFICS2,
        {"inputs": _floats(2, 5, 6),
         "padding_mask": np.array([[1] * 5, [1, 1, 0, 0, 0]], bool)},
        (2, 3, 8),
    ),
}


# keras-hub's precision and quantization checks rebuild the model four
# times: run them on one case per family (HiP: the one-block model, which
# has every HiP layer kind; the three-block ones cost minutes on JAX).
FULL_CHECKS = ("hip_perceiver_io", "resampler_idefics2_masked")


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone_case(request):
    return (request.param, *BACKBONES[request.param]())


def test_keras_hub_backbone_test(backbone_case):
    name, cls, kwargs, data, shape = backbone_case
    full = name in FULL_CHECKS
    hub.run_backbone_test(cls, dict(kwargs), data, shape,
                          run_mixed_precision_check=full,
                          run_quantization_check=full)


def test_keras_hub_model_saving_and_preset_tests(backbone_case, tmp_path):
    _, cls, kwargs, data, _ = backbone_case
    hub.run_model_saving_test(cls, dict(kwargs), data)
    backbone = cls(**kwargs)
    backbone.save_to_preset(str(tmp_path))
    hub.run_preset_test(cls, str(tmp_path), data,
                        expected_output=backbone(data))


def _mae_case():
    task = HiPMaskedAutoencoder(HiPBackbone(**HIP), seed=0)
    x = _hip_data(4)
    masked, masks = task.mask(x, np.random.default_rng(0))
    return task, (masked, x, masks), {"image": (4, 12, 3), "audio": (4, 6, 2)}


TASKS = {
    # name: () -> (task, train data, expected output shape)
    # keras-hub trains on (x, y, sample_weight): the caller-masked form of
    # the MAE's data (masked inputs, inputs, masks).
    "hip_masked_autoencoder": lambda: _mae_case(),
    "hip_classifier": lambda: (
        HiPClassifier(HiPBackbone(**HIP_LABEL)),
        ({"image": _floats(4, 12, 3)}, np.array([0, 1, 2, 1])), (4, 3),
    ),
    "resampler_encoder": lambda: (
        PerceiverResamplerEncoder(PerceiverResamplerBackbone(**IDEFICS2),
                                  output_dim=2),
        ({"inputs": _floats(4, 5, 6),
          "padding_mask": np.array([[1] * 5, [1, 1, 1, 0, 0]] * 2, bool)},
         _floats(4, 3, 2)),
        (4, 3, 2),
    ),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_case(request):
    return TASKS[request.param]()


def test_keras_hub_task_test(task_case):
    task, train_data, shape = task_case
    task.preprocessor = PassThroughPreprocessor()
    # The encoder has no default loss (what its tokens are for decides).
    compile_kwargs = ({"loss": "mse"}
                      if isinstance(task, PerceiverResamplerEncoder) else None)
    hub.run_task_test(task.__class__, init_kwargs_of(task), train_data,
                      expected_output_shape=shape,
                      compile_kwargs=compile_kwargs)


def test_keras_hub_task_saving_and_preset_tests(task_case, tmp_path):
    task, train_data, _ = task_case
    x = train_data[0]
    check_task_saving_and_preset(task, x, tmp_path)
