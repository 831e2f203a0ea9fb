"""SentencePiece tokenizer of krasserm's clm-base (xlnet-base-cased vocab)."""

import unicodedata

import keras
import numpy as np
from keras_hub.tokenizers import SentencePieceTokenizer

from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)


def xlnet_normalize(text):
    """The text normalization transformers' XLNet tokenizer applies before
    SentencePiece: whitespace runs collapsed and stripped, ``/'' as ",
    accents removed (NFKD without combining marks)."""
    text = " ".join(text.split()).replace("``", '"').replace("''", '"')
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c))


def _as_text(text):
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARSentencePieceTokenizer(SentencePieceTokenizer):
    """keras-hub's `SentencePieceTokenizer` with XLNet's special tokens and
    text normalization: the tokenizer krasserm's `perceiver-ar-clm-base`
    was trained with (`spiece.model` of xlnet-base-cased). Token ids equal
    transformers' `XLNetTokenizer(...)(text, add_special_tokens=False)`.

    Args:
        proto: a SentencePiece model (file path or serialized bytes) whose
            vocabulary holds `<s>`, `</s>` and `<pad>` (start, end and
            padding tokens).

    Like `PerceiverARTokenizer` it tokenizes in Python on every backend
    (the Perceiver AR preprocessor packs windows with NumPy).
    """

    backbone_cls = PerceiverARBackbone

    def __init__(self, proto=None, **kwargs):
        self._add_special_token("<s>", "start_token")
        self._add_special_token("</s>", "end_token")
        self._add_special_token("<pad>", "pad_token")
        super().__init__(proto=proto, **kwargs)

    def tokenize(self, inputs):
        """A string -> its ids (an array); strings (a list or an array) ->
        a list of id lists."""
        self._check_vocabulary()
        if isinstance(inputs, (str, bytes)):
            return self._tokenize_spm(xlnet_normalize(_as_text(inputs)))
        if hasattr(inputs, "numpy") and not isinstance(inputs, np.ndarray):
            inputs = inputs.numpy()  # eager TensorFlow strings
        texts = [xlnet_normalize(_as_text(t)) for t in np.ravel(inputs)]
        return self._tokenize_spm(texts)

    def detokenize(self, inputs):
        self._check_vocabulary()
        return self._detokenize_spm(inputs)
