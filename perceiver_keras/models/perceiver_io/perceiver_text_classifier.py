"""Byte-level text classification with a Perceiver."""

import keras

from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.models.input_validation import check_input_adapter
from perceiver_keras.models.perceiver_io.perceiver_classifier import PerceiverClassifier
from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverTextClassifier(PerceiverClassifier):
    """Classifies strings read as UTF-8 bytes.

    The encoder is the masked language model's (`PerceiverTokenAdapter`:
    byte embedding plus learned positions, padding masked in the
    cross-attention); one learned query cross-attends to the latents and a
    Dense gives the logits. With a `PerceiverTextPreprocessor`, `fit`,
    `evaluate` and `predict` take raw strings.

    Args: as `PerceiverClassifier`; `backbone` must read token ids through a
    `PerceiverTokenAdapter`. The preprocessor's `sequence_length` is set to
    the backbone's input length, the only length the model accepts (a
    preprocessor loaded with default arguments, e.g. by `from_preset` on a
    masked-LM preset, would otherwise pad to 2048).

    Example:
    ```python
    backbone = PerceiverBackbone(
        inputs_shape=(128,),
        input_adapter=PerceiverTokenAdapter(262, 64, 128),
        num_latents=16, latent_dim=64, num_self_attends_per_block=2,
        num_self_attend_heads=4,
    )
    classifier = PerceiverTextClassifier(
        backbone, num_classes=2,
        preprocessor=PerceiverTextPreprocessor(sequence_length=128),
    )
    classifier.fit(["good film", "dull plot"], [1, 0], epochs=3)
    classifier.predict(["what a film"])
    ```
    """

    preprocessor_cls = PerceiverTextPreprocessor

    def __init__(self, backbone, num_classes, **kwargs):
        check_input_adapter(backbone, PerceiverTokenAdapter, "token ids")
        preprocessor = kwargs.get("preprocessor")
        if isinstance(preprocessor, PerceiverTextPreprocessor):
            preprocessor.sequence_length = backbone.inputs_shape[0]
        super().__init__(backbone, num_classes, **kwargs)
