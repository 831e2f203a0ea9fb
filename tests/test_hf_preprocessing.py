"""The preprocessors of loaded transformers checkpoints match transformers'
tokenizer and image processor."""

import keras
import numpy as np
import pytest

from conftest import assert_close
from test_hf_models import build
from test_hf_models import save
from test_perceiver_image_converter import torchvision_processor_reference

from perceiver_keras.conversion.hf import load_transformers_preset
from perceiver_keras.models.perceiver_task import PerceiverTask

transformers = pytest.importorskip("transformers")

TEXTS = [
    "This is an incomplete sentence where some words are missing.",
    "Grüße aus Zürich — naïve café, 東京, emoji 😀!",
    "",
    "x" * 3000,  # truncated; [SEP] stays last
]


@pytest.mark.parametrize("architecture", [
    "PerceiverForSequenceClassification", "PerceiverForMaskedLM",
])
@pytest.mark.parametrize("length", [24, 2048])
def test_tokenizer_parity(tmp_path, architecture, length):
    model = build(architecture, max_position_embeddings=length)
    task = load_transformers_preset(PerceiverTask, save(model, tmp_path),
                                    load_weights=False)
    tokenizer = transformers.PerceiverTokenizer()
    expected = tokenizer(TEXTS, padding="max_length", truncation=True,
                         max_length=length)
    preprocessor = task.preprocessor
    if architecture == "PerceiverForMaskedLM":
        preprocessor = preprocessor.text_preprocessor  # before masking
    x = preprocessor(TEXTS)
    ids = keras.ops.convert_to_numpy(x["inputs"])
    mask = keras.ops.convert_to_numpy(x["padding_mask"])
    np.testing.assert_array_equal(ids, np.asarray(expected["input_ids"]))
    np.testing.assert_array_equal(mask,
                                  np.asarray(expected["attention_mask"]) == 1)


@pytest.fixture(scope="module")
def image_classifier(tmp_path_factory):
    # No preprocessor_config.json: PerceiverImageProcessor's defaults.
    model = build("PerceiverForImageClassificationConvProcessing")
    directory = save(model, tmp_path_factory.mktemp("conv"))
    return load_transformers_preset(PerceiverTask, directory,
                                    load_weights=False)


@pytest.mark.parametrize("size", [(256, 256), (300, 400), (480, 320),
                                  (224, 224), (97, 130)])
def test_image_processor_parity(image_classifier, size):
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype="uint8")
    pixels = image_classifier.preprocessor(image[None])["inputs"]
    assert_close(pixels[0], torchvision_processor_reference(image))


def test_real_image_processor_when_available(image_classifier):
    pytest.importorskip("torchvision")
    processor = transformers.PerceiverImageProcessor()
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3),
                                              dtype="uint8")
    expected = processor(image, return_tensors="np")["pixel_values"]
    pixels = image_classifier.preprocessor(image[None])["inputs"]
    assert_close(pixels, np.transpose(expected, (0, 2, 3, 1)))


def test_processor_config_is_read(tmp_path):
    model = build("PerceiverForImageClassificationFourier")
    processor = transformers.PerceiverImageProcessorPil(
        size={"height": 48, "width": 48}, crop_size={"height": 64,
                                                     "width": 64},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
    )
    task = load_transformers_preset(
        PerceiverTask, save(model, tmp_path, processor=processor),
        load_weights=False,
    )
    converter = task.preprocessor.image_converter
    assert converter.image_size == (48, 48)
    assert converter.crop_fraction == 0.75
    np.testing.assert_allclose(converter.mean, [127.5] * 3)
    np.testing.assert_allclose(converter.std, [63.75] * 3)
    # The Fourier model takes any image size, as transformers' does.
    assert task.backbone.inputs_shape == (None, None, 3)
