"""Perceiver AR's default tokenizer: UTF-8 bytes (id = byte + 6)."""

import keras

from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARTokenizer(PerceiverTokenizer):
    """The Perceiver byte tokenizer (262 ids: 6 special, 256 bytes), with
    `[BOS]` / `[EOS]` as the start and end tokens of causal modelling.

    Always tokenizes in Python (lists / NumPy), on every backend: the
    Perceiver AR preprocessor packs windows with NumPy.
    """

    backbone_cls = PerceiverARBackbone

    def __init__(self, sequence_length=None, dtype="int32", **kwargs):
        super().__init__(sequence_length=sequence_length, dtype=dtype,
                         **kwargs)
        self._add_special_token("[BOS]", "start_token")
        self._add_special_token("[EOS]", "end_token")

    def tokenize(self, inputs):
        return self._tokenize_python(inputs)

    def detokenize(self, inputs):
        return self._detokenize_python(inputs)
