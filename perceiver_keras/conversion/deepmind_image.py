"""DeepMind's ImageNet classifiers: image_learned, image_fourier, image_conv.

As in DeepMind's `imagenet_classification.ipynb`:
`ImagePreprocessor(**input_preprocessor)` + `PerceiverEncoder(**encoder)` +
`ClassificationDecoder(num_classes, **decoder)`. The three kinds differ only
in the preprocessor settings, so one module serves all three:

- learned: 1x1 conv to 256 channels, concatenated with trainable positions
  (50,176 x 256) passed through a 256 -> 256 projection; decoder without
  query residual.
- fourier: raw pixels with 2-D Fourier features (64 bands, max resolution
  224).
- conv: 7x7/2 conv (no bias), BatchNorm, ReLU, 3x3/2 max pool, all with
  TensorFlow "SAME" padding (56x56 tokens), with Fourier features (max
  resolution 56).

`deepmind_config` also holds `num_classes` and `image_size` (the square side
the model is built for; 224 for the released models).
"""

import keras
import numpy as np

from perceiver_keras.conversion.common import cross_attention_rows
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.deepmind import adapter_rows
from perceiver_keras.conversion.deepmind import backbone_options
from perceiver_keras.conversion.deepmind import check_keys
from perceiver_keras.conversion.deepmind import encoder_rows
from perceiver_keras.conversion.deepmind import require
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

PREPROCESSOR_KEYS = (
    "prep_type", "spatial_downsample", "temporal_downsample",
    "position_encoding_type", "fourier_position_encoding_kwargs",
    "trainable_position_encoding_kwargs", "n_extra_pos_mlp", "num_channels",
    "conv_after_patching", "conv2d_use_batchnorm", "concat_or_add_pos",
    "project_pos_dim", "name",
)
FOURIER_KEYS = ("num_bands", "max_resolution", "concat_pos", "sine_only")
TRAINABLE_KEYS = ("num_channels", "init_scale")
DECODER_KEYS = (
    "num_z_channels", "position_encoding_type", "use_query_residual",
    "trainable_position_encoding_kwargs", "qk_channels", "v_channels",
    "num_heads", "concat_preprocessed_input", "final_project", "name",
)
TOP_LEVEL_KEYS = (
    "input_preprocessor", "encoder", "decoder", "num_classes", "image_size",
)
PREPROCESSOR_SCOPE = "image_preprocessor"
DECODER_SCOPE = "classification_decoder/~/basic_decoder"


def image_adapter(preprocessor_config, name="input_adapter"):
    """`PerceiverImageAdapter` for DeepMind's `ImagePreprocessor(**cfg)`.

    Defaults are DeepMind's (`prep_type="conv"`, `spatial_downsample=4`,
    Fourier positions, 64 channels). Extra position MLPs and a conv stem
    without BatchNorm are refused: no released model uses them.
    """
    cfg = preprocessor_config
    check_keys(cfg, PREPROCESSOR_KEYS, "input_preprocessor")
    require(cfg, "n_extra_pos_mlp", (0,), "input_preprocessor")
    require(cfg, "conv2d_use_batchnorm", (True,), "input_preprocessor")
    position = require(
        cfg, "position_encoding_type", ("fourier", "trainable"),
        "input_preprocessor",
    )
    fourier = dict(cfg.get("fourier_position_encoding_kwargs") or {})
    trainable = dict(cfg.get("trainable_position_encoding_kwargs") or {})
    check_keys(fourier, FOURIER_KEYS, "fourier_position_encoding_kwargs")
    check_keys(trainable, TRAINABLE_KEYS, "trainable_position_encoding_kwargs")
    project_pos_dim = cfg.get("project_pos_dim", -1)
    return PerceiverImageAdapter(
        prep_type=cfg.get("prep_type", "conv"),
        spatial_downsample=cfg.get("spatial_downsample", 4),
        temporal_downsample=cfg.get("temporal_downsample", 1),
        num_channels=cfg.get("num_channels", 64),
        conv_padding="same",
        conv_after_patching=cfg.get("conv_after_patching", False),
        position_encoding=position,
        num_bands=fourier.get("num_bands", 64),
        max_resolution=fourier.get("max_resolution"),
        concat_pos=fourier.get("concat_pos", True),
        sine_only=fourier.get("sine_only", False),
        position_channels=trainable.get("num_channels"),
        position_init_scale=trainable.get("init_scale", 0.02),
        project_pos_dim=project_pos_dim if project_pos_dim > 0 else None,
        concat_or_add_pos=cfg.get("concat_or_add_pos", "concat"),
        name=name,
    )


def classifier_options(decoder_config):
    """`PerceiverClassifier` arguments for a `ClassificationDecoder(**cfg)`."""
    cfg = decoder_config
    check_keys(cfg, DECODER_KEYS, "decoder")
    require(cfg, "position_encoding_type", ("trainable",), "decoder")
    require(cfg, "concat_preprocessed_input", (False,), "decoder")
    require(cfg, "final_project", (True,), "decoder")
    queries = dict(cfg.get("trainable_position_encoding_kwargs") or {})
    check_keys(queries, TRAINABLE_KEYS, "trainable_position_encoding_kwargs")
    return dict(
        decoder_num_heads=cfg.get("num_heads", 1),
        decoder_qk_channels=cfg.get("qk_channels"),
        decoder_v_channels=cfg.get("v_channels"),
        decoder_query_channels=queries.get("num_channels"),
        decoder_use_query_residual=cfg.get("use_query_residual", False),
    )


def image_preprocessor(image_size):
    """DeepMind's colab preprocessing: crop 224/256, bicubic, mean/std."""
    converter = PerceiverImageConverter(
        image_size=image_size, crop_fraction=224 / 256, mode="deepmind"
    )
    return PerceiverImageClassifierPreprocessor(image_converter=converter)


def pixel_fourier_config(side, encoder, num_classes=10):
    """A `{kind, deepmind_config}` of an image classifier on raw pixels of
    `side` x `side` images with 6-band Fourier positions (3 + 26 channels),
    DeepMind's `encoder` options and a trainable-query decoder as wide as
    the latents (the long-input benchmark's and tests' checkpoints)."""
    width = encoder["num_z_channels"]
    return {"kind": "image_fourier", "deepmind_config": {
        "image_size": side, "num_classes": num_classes,
        "input_preprocessor": {
            "prep_type": "pixels", "spatial_downsample": 1,
            "position_encoding_type": "fourier",
            "fourier_position_encoding_kwargs": {
                "num_bands": 6, "max_resolution": [side, side],
                "concat_pos": True, "sine_only": False}},
        "encoder": encoder,
        "decoder": {"num_z_channels": width, "use_query_residual": True,
                    "position_encoding_type": "trainable",
                    "trainable_position_encoding_kwargs": {
                        "num_channels": width}},
    }}


def build_task(deepmind_config):
    """A `PerceiverImageClassifier` with random weights."""
    cfg = deepmind_config
    check_keys(cfg, TOP_LEVEL_KEYS, "deepmind_config")
    size = cfg.get("image_size", 224)
    backbone = PerceiverBackbone(
        inputs_shape=(size, size, 3),
        input_adapter=image_adapter(cfg.get("input_preprocessor", {})),
        **backbone_options(cfg.get("encoder", {})),
    )
    return PerceiverImageClassifier(
        backbone,
        num_classes=cfg.get("num_classes", 1000),
        preprocessor=image_preprocessor((size, size)),
        **classifier_options(cfg.get("decoder", {})),
    )


def weight_rows(task, deepmind_config):
    backbone, decoder = task.backbone, task.decoder
    return [
        *adapter_rows(PREPROCESSOR_SCOPE, backbone.input_adapter),
        *encoder_rows(backbone, deepmind_config.get("encoder", {})),
        (f"{DECODER_SCOPE}/~/trainable_position_encoding/pos_embs",
         decoder.trainable_queries.embeddings, None),
        *cross_attention_rows(f"{DECODER_SCOPE}/cross_attention",
                              decoder.cross_attention),
        *dense_rows(f"{DECODER_SCOPE}/output", decoder.output_dense),
    ]


def run_inputs(task, inputs):
    """Normalised `images` `[B, H, W, 3]` -> `{"logits": [B, num_classes]}`."""
    logits = task(np.asarray(inputs["images"], "float32"), training=False)
    return {"logits": keras.ops.convert_to_numpy(logits)}
