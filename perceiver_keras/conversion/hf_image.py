"""transformers' ImageNet classifiers as `PerceiverImageClassifier`s.

The three classes differ only in their (hard-coded) image preprocessor:

- `PerceiverForImageClassificationLearned`: 1x1 conv to 256 channels,
  concatenated with trainable positions (`image_size**2` x 256) passed
  through a 256 -> 256 Linear.
- `PerceiverForImageClassificationFourier`: raw pixels with 2-D Fourier
  features (64 bands, max resolution 224).
- `PerceiverForImageClassificationConvProcessing`: 7x7/2 conv without bias
  padded 3 on every side, BatchNorm, ReLU, unpadded 3x3/2 max pool (55x55
  tokens from 224x224), with Fourier features (64 bands, max resolution 56).

All three decode with one learned query of `d_latents` channels, one head
and a query residual. The learned model's input size is `config.image_size`
(its positions are learned per pixel). The other two take images of any
size, as in transformers: their Fourier features are computed for the
actual grid with the configured maximum resolution; their preprocessor
resizes to the image processor's output size (224 unless
`preprocessor_config.json` says otherwise). transformers' images are
channels-first `[B, 3, H, W]`, ours channels-last.
"""

import keras
import numpy as np

from perceiver_keras.conversion.hf_common import backbone_options
from perceiver_keras.conversion.hf_common import batch_norm_rows
from perceiver_keras.conversion.hf_common import conv_kernel
from perceiver_keras.conversion.hf_common import encoder_rows
from perceiver_keras.conversion.hf_common import linear_rows
from perceiver_keras.conversion.hf_common import num_labels
from perceiver_keras.conversion.hf_common import query_decoder_rows
from perceiver_keras.conversion.hf_common import task_on_backbone
from perceiver_keras.layers.adapters import PerceiverImageAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_image_classifier_preprocessor import (
    PerceiverImageClassifierPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_image_converter import (
    PerceiverImageConverter,
)

PREPROCESSOR = "perceiver.input_preprocessor"
DECODER = "perceiver.decoder.decoder"

# transformers' PerceiverImagePreprocessor settings per class.
ADAPTERS = {
    "PerceiverForImageClassificationLearned": dict(
        prep_type="conv1x1", spatial_downsample=1, num_channels=256,
        position_encoding="trainable", position_channels=256,
        project_pos_dim=256,
    ),
    "PerceiverForImageClassificationFourier": dict(
        prep_type="pixels", spatial_downsample=1, num_bands=64,
        max_resolution=(224, 224),
    ),
    "PerceiverForImageClassificationConvProcessing": dict(
        prep_type="conv", spatial_downsample=4, num_channels=64,
        conv_padding="pad_then_valid_pool", num_bands=64, max_resolution=(56, 56),
    ),
}

# PerceiverImageProcessor's defaults.
PROCESSOR_DEFAULTS = {
    "size": {"height": 224, "width": 224},
    "crop_size": {"height": 256, "width": 256},
    "do_center_crop": True, "do_resize": True, "do_rescale": True,
    "do_normalize": True, "rescale_factor": 1 / 255, "resample": 3,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
}
BICUBIC = 3


def _square(size, name):
    """`(height, width)` of a processor size: an int or a dict."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        return int(size["height"]), int(size["width"])
    raise ValueError(
        f"`{name}` of the image processor must be an int or "
        f"{{'height', 'width'}}. Received: {name}={size!r}."
    )


def image_preprocessor(processor_config, image_size):
    """transformers' `PerceiverImageProcessor` as our preprocessor.

    Crop `size / crop_size` of the shorter side, bicubic resize to the
    model's input size, `(x * rescale_factor - mean) / std`, all in
    transformers' arithmetic (`PerceiverImageConverter(mode="transformers")`).
    """
    p = {**PROCESSOR_DEFAULTS, **(processor_config or {})}
    if not p["do_resize"] or p["resample"] != BICUBIC:
        raise ValueError(
            "The image processor must resize bicubically (do_resize=True, "
            f"resample=3). Received: do_resize={p['do_resize']}, "
            f"resample={p['resample']}."
        )
    crop_fraction = None
    if p["do_center_crop"]:
        size = _square(p["size"], "size")
        crop = _square(p["crop_size"], "crop_size")
        if size[0] / crop[0] != size[1] / crop[1]:
            raise ValueError(
                "The image processor's crop must be square: size / crop_size "
                f"equal for height and width. Received: size={p['size']}, "
                f"crop_size={p['crop_size']}."
            )
        crop_fraction = size[0] / crop[0]
    scale = p["rescale_factor"] if p["do_rescale"] else 1.0
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if p["do_normalize"]:
        mean, std = p["image_mean"], p["image_std"]
    converter = PerceiverImageConverter(
        image_size=image_size,
        crop_fraction=crop_fraction,
        mean=[m / scale for m in mean],
        std=[s / scale for s in std],
        mode="transformers",
    )
    return PerceiverImageClassifierPreprocessor(image_converter=converter)


def processor_size(processor_config):
    """`(height, width)` the image processor resizes to."""
    p = {**PROCESSOR_DEFAULTS, **(processor_config or {})}
    return _square(p["size"], "size")


def input_size(architecture, config, processor_config):
    """The backbone's `(height, width)`: fixed only for learned positions."""
    if architecture == "PerceiverForImageClassificationLearned":
        return _square(config.get("image_size", 56), "image_size")
    return None, None


def heads(config, processor_config, image_size):
    """The task class of these checkpoints, its options and preprocessor."""
    options = dict(
        num_classes=num_labels(config),
        decoder_num_heads=1,
        decoder_query_channels=config.get("d_latents", 1280),
        decoder_use_query_residual=True,
    )
    preprocessor = image_preprocessor(processor_config, image_size)
    return {PerceiverImageClassifier: (options, preprocessor)}


def build_task(architecture, config, processor_config, tensor_names=()):
    """A `PerceiverImageClassifier` with random weights."""
    size = input_size(architecture, config, processor_config)
    adapter = PerceiverImageAdapter(
        position_init_scale=config.get("initializer_range", 0.02),
        name="input_adapter",
        **ADAPTERS[architecture],
    )
    backbone = PerceiverBackbone(
        inputs_shape=(*size, 3), input_adapter=adapter,
        **backbone_options(config),
    )
    if None in size:
        size = processor_size(processor_config)
    [(task_cls, (options, preprocessor))] = heads(
        config, processor_config, size
    ).items()
    return task_cls(backbone, preprocessor=preprocessor, **options)


def new_task(cls, model, config, processor_config, kwargs):
    size = model.backbone.inputs_shape[:2]
    if None in size:
        size = processor_size(processor_config)
    return task_on_backbone(
        cls, model, heads(config, processor_config, size), kwargs
    )


def adapter_rows(adapter):
    if adapter.prep_type == "conv1x1":
        return [
            *linear_rows(f"{PREPROCESSOR}.convnet_1x1", adapter.conv,
                         conv_kernel),
            (f"{PREPROCESSOR}.position_embeddings.position_embeddings",
             adapter.positions.embeddings, None),
            *linear_rows(f"{PREPROCESSOR}.positions_projection",
                         adapter.position_projection),
        ]
    if adapter.prep_type == "conv":
        return [
            *linear_rows(f"{PREPROCESSOR}.convnet.conv", adapter.conv,
                         conv_kernel),
            *batch_norm_rows(f"{PREPROCESSOR}.convnet.batchnorm",
                             adapter.batch_norm),
        ]
    return []


def weight_rows(task, architecture, config):
    return [
        *adapter_rows(task.backbone.input_adapter),
        *encoder_rows(task.backbone, "perceiver."),
        *query_decoder_rows(DECODER, task.decoder),
    ]


def run_inputs(task, architecture, inputs):
    """`inputs` (or `pixel_values`) `[B, 3, H, W]` -> `{"logits"}`."""
    images = inputs.get("inputs", inputs.get("pixel_values"))
    if images is None:
        raise ValueError(
            "`inputs` must hold `inputs` (or `pixel_values`), images "
            f"[batch, 3, height, width]. Received keys {sorted(inputs)}."
        )
    mask = inputs.get("attention_mask")
    if mask is not None and not np.all(mask):
        raise ValueError(
            "An `attention_mask` that masks image tokens is not supported. "
            "Received a mask with zeros."
        )
    images = np.transpose(np.asarray(images, "float32"), (0, 2, 3, 1))
    logits = task(images, training=False)
    return {"logits": keras.ops.convert_to_numpy(logits)}


def example_inputs(task, architecture):
    """A random 0..255 image through the task's preprocessor, channels
    first."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 256, 320, 3), dtype="uint8")
    pixels = keras.ops.convert_to_numpy(task.preprocessor(image)["inputs"])
    return {"inputs": np.transpose(pixels, (0, 3, 1, 2))}
