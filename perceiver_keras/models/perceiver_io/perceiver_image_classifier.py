"""ImageNet-style image classification with a Perceiver IO."""

import keras

from perceiver_keras.models.perceiver_io.perceiver_classifier import PerceiverClassifier

from perceiver_keras.models.perceiver_io.perceiver_image_classifier_preprocessor import (
    PerceiverImageClassifierPreprocessor,
)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverImageClassifier(PerceiverClassifier):
    """A `PerceiverClassifier` over images `[batch, H, W, 3]`.

    The backbone reads images through a `PerceiverImageAdapter`; the head is
    one learned query cross-attending to the latents (DeepMind's
    `ClassificationDecoder`). With a `PerceiverImageClassifierPreprocessor`,
    `predict` and `fit` take raw 0..255 images and apply DeepMind's ImageNet
    preprocessing (centre crop of 224/256 of the shorter side, bicubic
    resize, mean/std normalisation).

    The built-in presets `perceiver_io_imagenet_learned`,
    `perceiver_io_imagenet_fourier` and `perceiver_io_imagenet_conv` are
    DeepMind's three ImageNet models (see `perceiver_keras.models.
    presets`).

    Args: as `PerceiverClassifier`.

    Example:
    ```python
    classifier = PerceiverImageClassifier.from_preset(
        "perceiver_io_imagenet_conv"  # after converting the checkpoint
    )
    classifier.predict(images_uint8)  # [batch, 1000] logits
    ```
    """

    preprocessor_cls = PerceiverImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, **kwargs):
        # The preprocessor's output must be the model's input structure.
        preprocessor = kwargs.get("preprocessor")
        if isinstance(preprocessor, PerceiverImageClassifierPreprocessor):
            preprocessor.return_padding_mask = (
                "padding_mask" in backbone.input
            )
        super().__init__(backbone, num_classes, **kwargs)
