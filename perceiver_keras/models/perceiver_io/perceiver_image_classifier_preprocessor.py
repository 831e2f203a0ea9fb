"""Preprocessor of `PerceiverImageClassifier`: raw images to model input."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_image_converter import (
    PerceiverImageConverter,
)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Centre crop, bicubic resize and normalise images for the classifier.

    Wraps a `PerceiverImageConverter` (DeepMind's colab preprocessing by
    default; `mode="transformers"` for transformers' image processor). Takes
    0..255 images `[batch, H, W, 3]` of any size; labels pass through.
    """

    backbone_cls = PerceiverBackbone
    image_converter_cls = PerceiverImageConverter
