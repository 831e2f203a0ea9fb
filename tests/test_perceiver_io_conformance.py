"""keras-hub's conformance suite on every Perceiver IO backbone and task.

One small model per input kind (arrays, images, tokens, the multimodal
token input, optical-flow frame pairs) goes through keras-hub's
`run_backbone_test` (serialization, eager and compiled predict, tf.data,
precision policies, int8/float8 dtype maps), `run_model_saving_test` and
`run_preset_test`; every task goes through `run_task_test` (preprocessor
output structure, predict and fit on arrays, tf.data and split
preprocessing, no default compile). Checks keras-hub itself leaves out on
torch (precision on CPU, quantization) are run by `harness.check_policies`
here and by the tolerance tests in `test_perceiver_io_precision.py`.
"""

import json
import os

import keras
import numpy as np
import pytest

from harness import PassThroughPreprocessor
from harness import check_task_saving_and_preset
from harness import hub
from harness import init_kwargs_of
from perceiver_keras import PerceiverArrayAdapter
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverImageAdapter
from perceiver_keras import PerceiverImageClassifier
from perceiver_keras import PerceiverImageClassifierPreprocessor
from perceiver_keras import PerceiverImageConverter
from perceiver_keras import PerceiverIO
from perceiver_keras import PerceiverMaskedLM
from perceiver_keras import PerceiverMaskedLMPreprocessor
from perceiver_keras import PerceiverMultimodalAutoencoder
from perceiver_keras import PerceiverOpticalFlow
from perceiver_keras import PerceiverTextClassifier
from perceiver_keras import PerceiverTextPreprocessor
from perceiver_keras import PerceiverTokenAdapter
from perceiver_keras.conversion import deepmind_flow
from perceiver_keras.conversion import deepmind_multimodal

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "deepmind")
rng = np.random.default_rng(0)
LATENTS = dict(num_latents=4, latent_dim=8, num_self_attends_per_block=1,
               num_self_attend_heads=2)


def fixture_config(kind):
    with open(os.path.join(FIXTURES, f"{kind}-public", "config.json")) as f:
        return json.load(f)["deepmind_config"]


# --- backbones, one per input kind ------------------------------------


def _flow_backbone_kwargs():
    return init_kwargs_of(
        deepmind_flow.build_task(fixture_config("optical_flow")).backbone
    )


def _multimodal_backbone_kwargs():
    return init_kwargs_of(
        deepmind_multimodal.build_task(fixture_config("multimodal")).backbone
    )


def _floats(*shape):
    return rng.normal(size=shape).astype("float32")


BACKBONES = {
    # name: (constructor kwargs, input data, expected output shape)
    "array": lambda: (
        dict(inputs_shape=(None, 3),
             input_adapter=PerceiverArrayAdapter(num_bands=3,
                                                 max_resolution=(16,)),
             num_blocks=2, **LATENTS),
        _floats(2, 5, 3), (2, 4, 8),
    ),
    "array_with_mask": lambda: (
        dict(inputs_shape=(5, 3),
             input_adapter=PerceiverArrayAdapter(position_encoding=None),
             **LATENTS),
        {"inputs": _floats(2, 5, 3),
         "padding_mask": np.array([[1] * 5, [1, 1, 1, 0, 0]], bool)},
        (2, 4, 8),
    ),
    "image_conv": lambda: (
        dict(inputs_shape=(8, 8, 3),
             input_adapter=PerceiverImageAdapter("conv", 4, num_channels=8,
                                                 num_bands=2),
             **LATENTS),
        _floats(2, 8, 8, 3), (2, 4, 8),
    ),
    "image_patches": lambda: (
        dict(inputs_shape=(8, 8, 3),
             input_adapter=PerceiverImageAdapter(
                 "patches", 2, num_channels=8, conv_after_patching=True,
                 position_encoding="trainable", position_channels=4),
             **LATENTS),
        _floats(2, 8, 8, 3), (2, 4, 8),
    ),
    "tokens": lambda: (
        dict(inputs_shape=(12,),
             input_adapter=PerceiverTokenAdapter(262, 8, 12), **LATENTS),
        {"inputs": rng.integers(0, 262, (2, 12)).astype("int32"),
         "padding_mask": np.ones((2, 12), bool)},
        (2, 4, 8),
    ),
    "optical_flow": lambda: (
        _flow_backbone_kwargs(), _floats(2, 2, 12, 16, 3), (2, 16, 32)
    ),
    "multimodal_tokens": lambda: (
        _multimodal_backbone_kwargs(),
        _floats(2, *_multimodal_backbone_kwargs()["inputs_shape"]),
        None,
    ),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone_case(request):
    kwargs, data, shape = BACKBONES[request.param]()
    if shape is None:
        shape = PerceiverBackbone(**kwargs)(data).shape
    return request.param, kwargs, data, tuple(shape)


def test_keras_hub_backbone_test(backbone_case):
    _, kwargs, data, shape = backbone_case
    # keras-hub's checks replace layers in the kwargs they are given.
    hub.run_backbone_test(PerceiverBackbone, dict(kwargs), data, shape)


def test_keras_hub_model_saving_and_preset_tests(backbone_case, tmp_path):
    _, kwargs, data, _ = backbone_case
    hub.run_model_saving_test(PerceiverBackbone, dict(kwargs), data)
    backbone = PerceiverBackbone(**kwargs)
    backbone.save_to_preset(str(tmp_path))
    expected = backbone(data)
    hub.run_preset_test(PerceiverBackbone, str(tmp_path), data,
                        expected_output=expected)


# --- tasks ---------------------------------------------------------------


def _array_backbone(**overrides):
    return PerceiverBackbone(
        inputs_shape=(6, 2),
        input_adapter=PerceiverArrayAdapter(num_bands=2,
                                            max_resolution=(6,)),
        **{**LATENTS, **overrides},
    )


def _array_data(n=4):
    return {"inputs": _floats(n, 6, 2), "padding_mask": np.ones((n, 6), bool)}


def _texts(n=4):
    words = ["good", "bad", "film", "plot", "dull", "fine"]
    return np.array([" ".join(rng.choice(words, 3)) for _ in range(n)])


def _flow_task():
    task = deepmind_flow.build_task(fixture_config("optical_flow"))
    frames = {"inputs": _floats(4, 2, 12, 16, 3)}
    return task, (frames, _floats(4, 12, 16, 2)), (4, 12, 16, 2)


def _multimodal_task():
    task = deepmind_multimodal.build_task(fixture_config("multimodal"))
    shapes = task.inputs_shape
    x = {name: _floats(4, *shape) for name, shape in shapes.items()}
    y = {"image": _floats(4, *shapes["image"]),
         "audio": _floats(4, *shapes["audio"]),
         "label": np.eye(shapes["label"][-1], dtype="float32")[[0, 1, 2, 3]]}
    expected = {name: (4, *shape) for name, shape in shapes.items()}
    return task, (x, y), expected


TASKS = {
    # name: () -> (task, train_data, expected output shape)
    "classifier": lambda: (
        PerceiverClassifier(_array_backbone(), 3,
                            preprocessor=PassThroughPreprocessor()),
        (_array_data(), np.array([0, 1, 2, 1])), (4, 3),
    ),
    "classifier_mean_pooling": lambda: (
        PerceiverClassifier(_array_backbone(), 3, pooling="mean",
                            activation="softmax",
                            preprocessor=PassThroughPreprocessor()),
        (_array_data(), np.array([0, 1, 2, 1])), (4, 3),
    ),
    "perceiver_io": lambda: (
        PerceiverIO(_array_backbone(), output_index_dims=(6,),
                    output_channels=1, num_bands=2,
                    preprocessor=PassThroughPreprocessor()),
        (_array_data(), _floats(4, 6, 1)), (4, 6, 1),
    ),
    "image_classifier_pixels": lambda: (
        PerceiverImageClassifier(
            PerceiverBackbone((8, 8, 3),
                              PerceiverImageAdapter("pixels", num_bands=2),
                              **LATENTS),
            2,
            preprocessor=PerceiverImageClassifierPreprocessor(
                PerceiverImageConverter(image_size=(8, 8))
            ),
        ),
        (rng.integers(0, 256, (4, 10, 12, 3)).astype("uint8"),
         np.array([0, 1, 1, 0])),
        (4, 2),
    ),
    "image_classifier_conv": lambda: (
        PerceiverImageClassifier(
            PerceiverBackbone((8, 8, 3),
                              PerceiverImageAdapter("conv", 4, num_channels=4,
                                                    num_bands=2),
                              **LATENTS),
            2,
            preprocessor=PerceiverImageClassifierPreprocessor(
                PerceiverImageConverter(image_size=(8, 8))
            ),
        ),
        (rng.integers(0, 256, (4, 10, 12, 3)).astype("uint8"),
         np.array([0, 1, 1, 0])),
        (4, 2),
    ),
    "text_classifier": lambda: (
        PerceiverTextClassifier(
            PerceiverBackbone((16,), PerceiverTokenAdapter(262, 8, 16),
                              **LATENTS),
            2, preprocessor=PerceiverTextPreprocessor(sequence_length=16),
        ),
        (_texts(), np.array([0, 1, 1, 0])), (4, 2),
    ),
    "masked_lm": lambda: (
        PerceiverMaskedLM(
            PerceiverBackbone((16,), PerceiverTokenAdapter(262, 8, 16),
                              **LATENTS),
            decoder_num_heads=2,
            # Deterministic masking (every byte becomes [MASK]): keras-hub
            # compares predictions of separate preprocessor runs.
            preprocessor=PerceiverMaskedLMPreprocessor(
                sequence_length=16, mask_selection_rate=1.0,
                mask_token_rate=1.0, random_token_rate=0.0,
            ),
        ),
        (_texts(),), (4, 16, 262),
    ),
    "optical_flow": _flow_task,
    "multimodal_autoencoder": _multimodal_task,
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_case(request):
    task, train_data, shape = TASKS[request.param]()
    if task.preprocessor is None:  # keras-hub's harness calls one
        task.preprocessor = PassThroughPreprocessor()
    return task, train_data, shape


def test_keras_hub_task_test(task_case):
    task, train_data, shape = task_case
    # One batch for every predict path: keras-hub compares them at 1e-6,
    # and XLA's kernels for batch 2 and batch 4 differ by ~1.3e-6 in the
    # multimodal decoder's float32 round-off.
    batch_size = len(keras.tree.flatten(train_data)[0])
    hub.run_task_test(task.__class__, init_kwargs_of(task), train_data,
                      expected_output_shape=shape, batch_size=batch_size)


def test_keras_hub_task_saving_and_preset_tests(task_case, tmp_path):
    task, train_data, _ = task_case
    x = task.preprocessor(*train_data)[0]
    check_task_saving_and_preset(task, x, tmp_path)
