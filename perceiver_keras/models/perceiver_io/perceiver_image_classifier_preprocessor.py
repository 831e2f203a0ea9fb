"""Preprocessor of `PerceiverImageClassifier`: raw images to model input."""

import keras
from keras_hub.models import ImageClassifierPreprocessor
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.src.utils.tensor_utils import try_import_tensorflow

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

    Returns the model's input dict: `{"inputs": images}`, plus an all-valid
    `"padding_mask"` `[batch, h, w]` when `return_padding_mask` (the
    classifier sets it when its backbone takes a mask, so the output has the
    structure of the model's inputs, in `tf.data` as well).
    """

    backbone_cls = PerceiverBackbone
    image_converter_cls = PerceiverImageConverter

    def __init__(self, image_converter=None, return_padding_mask=False,
                 **kwargs):
        super().__init__(image_converter=image_converter, **kwargs)
        self.return_padding_mask = return_padding_mask

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        images = self.image_converter(x) if self.image_converter else x
        x = {"inputs": images}
        if self.return_padding_mask:
            tf = try_import_tensorflow()
            if tf is not None and isinstance(images, tf.Tensor):
                x["padding_mask"] = tf.ones(tf.shape(images)[:-1], "bool")
            else:
                x["padding_mask"] = keras.ops.ones(
                    keras.ops.shape(images)[:-1], "bool"
                )
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def get_config(self):
        config = super().get_config()
        config["return_padding_mask"] = self.return_padding_mask
        return config
