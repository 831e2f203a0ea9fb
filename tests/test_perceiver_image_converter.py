"""PerceiverImageConverter against the reference preprocessing pipelines.

Numbers, not shapes. References:
- "deepmind": DeepMind's ImageNet colab procedure, run with
  `jax.image.resize` (jax is imported directly, whatever the Keras backend).
- "transformers": transformers' `PerceiverImageProcessor` (torchvision
  backend). Its pipeline is re-run here with plain torch (crop as
  `TorchvisionBackend.center_crop`, `torch.nn.functional.interpolate(...,
  "bicubic", antialias=True)` as `tvF.resize` calls it on CPU, fused
  mean/std as `rescale_and_normalize`); the real processor is also compared
  when torchvision can be imported.
- "transformers_pil": transformers' `PerceiverImageProcessorPil` itself
  (needs Pillow).

Achieved (max abs difference on normalised values, CPU, all 3 backends):
deepmind 3.4e-6; transformers uint8 2.4e-7 (pixels identical), float
4.3e-6; transformers_pil 4.8e-7 (pixels identical). Asserted below with a
small margin, plus exact equality of the uint8 pixels for the fixed-point
modes.
"""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from conftest import assert_close
from perceiver_keras.models.perceiver_io.perceiver_image_converter import IMAGENET_MEAN
from perceiver_keras.models.perceiver_io.perceiver_image_converter import IMAGENET_STD
from perceiver_keras.models.perceiver_io.perceiver_image_converter import (
    PerceiverImageConverter,
)

# Several sizes and aspect ratios: identity crop (256x256), landscape,
# portrait with Pillow's vertical-first pass (480x320), upsampling
# (224x224 -> crop 196, 64x80 -> crop 56) and odd crop offsets (257x333),
# where DeepMind's crop (rounds up) and transformers' (rounds down) differ.
SIZES = [(256, 256), (300, 400), (480, 320), (224, 224), (64, 80),
         (257, 333)]

TRANSFORMERS_FLOAT_ATOL = 2e-5  # measured 4.3e-6
FIXED_POINT_ATOL = 2e-6  # measured 4.8e-7 (pixels identical)


def _images():
    rng = np.random.default_rng(1234)
    images = {}
    for h, w in SIZES:
        images[(h, w)] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return images


IMAGES = _images()


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _pixels(normalised):
    """Back to 0..255 pixel values (exact for rounded uint8 pipelines)."""
    return np.round(
        normalised.astype(np.float64) * np.array(IMAGENET_STD)
        + np.array(IMAGENET_MEAN)
    )


# ---------------------------------------------------------------- references


def colab_preprocess(image):
    """DeepMind's ImageNet colab: resize_and_center_crop + normalize."""
    jax = pytest.importorskip("jax")

    mean_rgb = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    stddev_rgb = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    image_height, image_width = image.shape[0], image.shape[1]
    padded_center_crop_size = (
        (224 / (224 + 32))
        * np.minimum(image_height, image_width).astype(np.float32)
    ).astype(np.int32)
    offset_height = ((image_height - padded_center_crop_size) + 1) // 2
    offset_width = ((image_width - padded_center_crop_size) + 1) // 2
    image = image[
        offset_height : offset_height + padded_center_crop_size,
        offset_width : offset_width + padded_center_crop_size,
    ]
    image = jax.image.resize(image, (224, 224, 3), method="bicubic")
    return (np.asarray(image) - np.array(mean_rgb)) / np.array(stddev_rgb)


def torchvision_processor_reference(image, center_crop=True):
    """transformers' PerceiverImageProcessor (TorchvisionBackend) in torch."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch.nn.functional as F
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN
    from transformers.image_utils import IMAGENET_DEFAULT_STD

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = x.contiguous()[None]
    height, width = x.shape[-2:]
    min_dim = min(height, width)
    crop = int((224 / 256) * min_dim)
    top = int((height - crop) / 2.0)
    left = int((width - crop) / 2.0)
    if center_crop:
        x = x[..., top : top + crop, left : left + crop]
    if tuple(x.shape[-2:]) != (224, 224):
        x = F.interpolate(x, size=[224, 224], mode="bicubic",
                          align_corners=False, antialias=True)
    rescale_factor = 1 / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN) * (1.0 / rescale_factor)
    std = torch.tensor(IMAGENET_DEFAULT_STD) * (1.0 / rescale_factor)
    x = x.to(torch.float32)
    x = (x - mean[:, None, None]) / std[:, None, None]
    return x[0].permute(1, 2, 0).numpy()


def pil_processor(image, center_crop=True):
    PIL = pytest.importorskip("PIL")
    pytest.importorskip("transformers")
    from transformers import PerceiverImageProcessorPil

    from perceiver_keras.models.perceiver_io.image_resampling import (
        pil_horizontal_first,
    )

    height, width = image.shape[:2]
    if center_crop:
        height = width = int((224 / 256) * min(height, width))
    major = int(PIL.__version__.split(".")[0])
    if major < 13 and not pil_horizontal_first(height, width, 224, 224):
        pytest.skip("Pillow < 13 always resizes width first; the converter "
                    "follows Pillow >= 13's pass order.")
    processor = PerceiverImageProcessorPil(do_center_crop=center_crop)
    out = processor(image, return_tensors="np")
    return out["pixel_values"][0].transpose(1, 2, 0)


# ------------------------------------------------------------------- numbers


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_deepmind_matches_colab_jax_resize(size):
    image = IMAGES[size]
    out = _np(PerceiverImageConverter(mode="deepmind")(image))
    ref = colab_preprocess(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # The project's tolerance (measured 3.4e-6 absolute with XLA's default
    # optimisations, 3.1e-5 with the tests' level 0, on values up to 2.6).
    assert_close(out, ref)
    # float input takes the same float path.
    assert_close(_np(PerceiverImageConverter()(image.astype(np.float32))), ref)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_transformers_matches_torchvision_processor(size):
    image = IMAGES[size]
    converter = PerceiverImageConverter(mode="transformers")
    # uint8: torch's fixed-point uint8 kernel, emulated bit for bit.
    out = _np(converter(image))
    ref = torchvision_processor_reference(image)
    np.testing.assert_array_equal(_pixels(out), _pixels(ref))
    np.testing.assert_allclose(out, ref, rtol=0, atol=FIXED_POINT_ATOL)
    # float: torch's float kernel (no rounding, no clamping).
    image_f = image.astype(np.float32)
    out_f = _np(converter(image_f))
    ref_f = torchvision_processor_reference(image_f)
    np.testing.assert_allclose(out_f, ref_f, rtol=0,
                               atol=TRANSFORMERS_FLOAT_ATOL)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_transformers_pil_matches_pil_processor(size):
    image = IMAGES[size]
    ref = pil_processor(image)
    converter = PerceiverImageConverter(mode="transformers_pil")
    out = _np(converter(image))
    np.testing.assert_array_equal(_pixels(out), _pixels(ref))
    np.testing.assert_allclose(out, ref, rtol=0, atol=FIXED_POINT_ATOL)
    # Integer-valued float input: the processor casts it to uint8 too.
    out_f = _np(converter(image.astype(np.float32)))
    np.testing.assert_allclose(out_f, ref, rtol=0, atol=FIXED_POINT_ATOL)


@pytest.mark.parametrize("size", [(480, 320), (300, 400), (64, 80)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_crop_matches_processors(size):
    # Uncropped non-square resizes: Pillow's height-first pass (480x320,
    # height shrinks more than twice as much as width) and upsampling.
    image = IMAGES[size]
    out = _np(PerceiverImageConverter(crop_fraction=None,
                                      mode="transformers")(image))
    ref = torchvision_processor_reference(image, center_crop=False)
    np.testing.assert_array_equal(_pixels(out), _pixels(ref))
    ref = pil_processor(image, center_crop=False)
    out = _np(PerceiverImageConverter(crop_fraction=None,
                                      mode="transformers_pil")(image))
    np.testing.assert_array_equal(_pixels(out), _pixels(ref))
    np.testing.assert_allclose(out, ref, rtol=0, atol=FIXED_POINT_ATOL)


def test_real_torchvision_processor_when_available():
    pytest.importorskip("torchvision")
    from transformers import PerceiverImageProcessor

    processor = PerceiverImageProcessor()
    converter = PerceiverImageConverter(mode="transformers")
    for size in [(300, 400), (480, 320), (64, 80)]:
        image = IMAGES[size]
        ref = processor(image, return_tensors="np")["pixel_values"][0]
        ref = ref.transpose(1, 2, 0)
        np.testing.assert_allclose(_np(converter(image)), ref, rtol=0,
                                   atol=FIXED_POINT_ATOL)


def test_modes_differ_where_the_references_do():
    # Odd (H - crop): DeepMind's crop offset rounds up, transformers' down.
    image = IMAGES[(257, 333)]
    deepmind = _np(PerceiverImageConverter(mode="deepmind")(image))
    transformers = _np(PerceiverImageConverter(mode="transformers")(image))
    assert np.abs(deepmind - transformers).max() > 0.5


def test_batched_unbatched_list_and_tensor_inputs():
    converter = PerceiverImageConverter(mode="transformers")
    a, b = IMAGES[(300, 400)], IMAGES[(480, 320)]
    single_a, single_b = _np(converter(a)), _np(converter(b))
    batch = _np(converter(np.stack([a, a[::-1]])))
    assert batch.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(batch[0], single_a)
    # Images of different sizes in a list: converted one by one, stacked.
    stacked = _np(converter([a, b]))
    np.testing.assert_array_equal(stacked, np.stack([single_a, single_b]))
    # Backend tensor input.
    np.testing.assert_array_equal(
        _np(converter(ops.convert_to_tensor(a))), single_a
    )
    # Other integer dtypes are 0..255 pixels too.
    np.testing.assert_array_equal(_np(converter(a.astype("int32"))),
                                  single_a)


def test_custom_size_no_crop_and_normalisation():
    image = IMAGES[(300, 400)]
    converter = PerceiverImageConverter(
        image_size=(96, 128), crop_fraction=None, mean=(0, 0, 0),
        std=(1, 1, 1), mode="deepmind",
    )
    out = _np(converter(image))
    assert out.shape == (96, 128, 3)
    jax = pytest.importorskip("jax")

    ref = np.asarray(jax.image.resize(image, (96, 128, 3), "bicubic"))
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-3)  # 0..255 scale
    # image_size is settable (keras-hub Preprocessor.image_size).
    converter.image_size = (64, 64)
    assert _np(converter(image)).shape == (64, 64, 3)


# ------------------------------------------------------------------- tf.data


@pytest.mark.parametrize(
    "mode, crop_fraction",
    [("deepmind", 0.875), ("transformers", 0.875),
     ("transformers_pil", 0.875), ("transformers_pil", None)],
)
def test_tf_data_static_and_dynamic_shapes(mode, crop_fraction):
    tf = pytest.importorskip("tensorflow")
    converter = PerceiverImageConverter(mode=mode, crop_fraction=crop_fraction)
    images = [IMAGES[(300, 400)], IMAGES[(480, 320)], IMAGES[(64, 80)]]
    expected = [_np(converter(image)) for image in images]
    # Fixed-point modes: identical pixels; normalisation may differ by an
    # ulp between TensorFlow and the backend's ops.
    atol = 1e-5 if mode == "deepmind" else 1e-6

    # Static shapes (a fixed-size batch).
    ds = tf.data.Dataset.from_tensor_slices(np.stack([images[0]] * 2))
    ds = ds.batch(2).map(converter)
    (batch,) = list(ds.as_numpy_iterator())
    assert batch.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(batch[0], expected[0], rtol=0, atol=atol)

    # Height and width unknown until run time (as after decode_jpeg).
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    )
    ds = ds.map(converter).batch(3)
    (batch,) = list(ds.as_numpy_iterator())
    assert batch.shape == (3, 224, 224, 3)
    for got, want in zip(batch, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
        if mode != "deepmind":
            np.testing.assert_array_equal(_pixels(got), _pixels(want))


def test_image_classifier_preprocessor_in_tf_data():
    tf = pytest.importorskip("tensorflow")
    import keras_hub

    converter = PerceiverImageConverter(mode="transformers_pil")
    preprocessor = keras_hub.models.ImageClassifierPreprocessor(
        image_converter=converter
    )
    images = np.stack([IMAGES[(300, 400)]] * 2)
    labels = np.array([1, 2])
    x, y = preprocessor(images, labels)
    np.testing.assert_array_equal(_np(x), _np(converter(images)))
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    ((bx, by),) = list(ds.map(preprocessor).as_numpy_iterator())
    np.testing.assert_array_equal(bx, _np(x))
    np.testing.assert_array_equal(by, labels)


# -------------------------------------------------------------------- config


def test_config_round_trip():
    converter = PerceiverImageConverter(
        image_size=(192, 160), crop_fraction=0.9, mean=(1.0, 2.0, 3.0),
        std=(50.0, 60.0, 70.0), mode="transformers_pil", name="conv",
    )
    config = converter.get_config()
    assert config["image_size"] == (192, 160)
    assert config["crop_fraction"] == 0.9
    assert config["mode"] == "transformers_pil"
    assert config["mean"] == [1.0, 2.0, 3.0]
    restored = PerceiverImageConverter.from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(converter)
    assert serialized["registered_name"] == (
        "perceiver_keras>PerceiverImageConverter"
    )
    serialized = json.loads(json.dumps(serialized))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(revived, PerceiverImageConverter)
    image = IMAGES[(300, 400)]
    np.testing.assert_array_equal(_np(revived(image)), _np(converter(image)))


def test_preset_save_and_load_round_trip(tmp_path):
    import keras_hub
    from keras_hub.src.utils.preset_utils import KerasPresetLoader
    from keras_hub.src.utils.preset_utils import load_json

    converter = PerceiverImageConverter(mode="transformers", crop_fraction=0.8)
    converter.save_to_preset(str(tmp_path))
    assert os.path.exists(tmp_path / "image_converter.json")
    loaded = KerasPresetLoader(str(tmp_path), {}).load_image_converter(
        PerceiverImageConverter
    )
    assert isinstance(loaded, PerceiverImageConverter)
    assert loaded.get_config() == converter.get_config()
    image = IMAGES[(480, 320)]
    np.testing.assert_array_equal(_np(loaded(image)), _np(converter(image)))

    # As part of a preprocessor (preprocessor.json + image_converter.json).
    preprocessor = keras_hub.models.ImageClassifierPreprocessor(
        image_converter=converter
    )
    pre_dir = tmp_path / "pre"
    preprocessor.save_to_preset(str(pre_dir))
    revived = keras.saving.deserialize_keras_object(
        load_json(str(pre_dir), "preprocessor.json")
    )
    assert isinstance(revived.image_converter, PerceiverImageConverter)
    assert revived.image_converter.get_config() == converter.get_config()
    x = revived(image[None])
    np.testing.assert_array_equal(_np(x)[0], _np(converter(image)))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((224, 224), "rank 2"),
        ((1, 2, 224, 224, 3), "rank 5"),
        ((224, 224, 4), "4 channels"),
        ((2, 224, 224, 1), "1 channels"),
        ((0, 10, 3), "non-empty"),
        ((2, 224, 0, 3), "non-empty"),
        ((1, 1, 3), "too small"),
    ],
)
def test_bad_input_shapes(shape, fragment):
    converter = PerceiverImageConverter()
    with pytest.raises(ValueError) as info:
        converter(np.zeros(shape, dtype=np.uint8))
    message = str(info.value)
    assert "`inputs`" in message
    assert fragment in message
    assert str(tuple(shape)) in message
    if fragment != "too small":
        assert "(batch, height, width, 3) or (height, width, 3)" in message


def test_bad_input_dtype_and_empty_list():
    converter = PerceiverImageConverter()
    with pytest.raises(ValueError, match="dtype bool"):
        converter(np.zeros((8, 8, 3), dtype=bool))
    with pytest.raises(ValueError, match="at least one image"):
        converter([])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"mode": "timm"}, "`mode`"),
        ({"crop_fraction": 1.5}, "`crop_fraction`"),
        ({"crop_fraction": 0.0}, "`crop_fraction`"),
        ({"image_size": (0, 224)}, "`image_size`"),
        ({"image_size": 224}, "`image_size`"),
        ({"mean": (1.0, 2.0)}, "`mean`"),
        ({"std": (1.0, 0.0, 1.0)}, "`std`"),
        ({"data_format": "channels_first"}, "`data_format`"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PerceiverImageConverter(**kwargs)
