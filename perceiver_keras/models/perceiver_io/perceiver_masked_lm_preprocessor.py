"""Masked-LM training data: strings to randomly masked bytes and labels."""

import keras
import numpy as np
from keras_hub.models import Preprocessor
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python
from keras_hub.src.utils.tensor_utils import tf

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import NUM_SPECIAL_TOKENS
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import VOCABULARY_SIZE
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMaskedLMPreprocessor(Preprocessor):
    """Tokenizes, pads, and masks bytes for `PerceiverMaskedLM.fit`.

    Each non-padding position is selected with probability
    `mask_selection_rate`; a selected byte becomes `[MASK]` with probability
    `mask_token_rate`, a random byte with probability `random_token_rate`,
    and stays as it is otherwise (BERT's recipe, as keras-hub's
    `MaskedLMPreprocessor`). Because the Perceiver decodes every position,
    labels are dense:

    - x: `{"inputs": masked ids [B, L], "padding_mask": bool [B, L]}`
    - y: the original ids `[B, L]`
    - sample_weight: float `[B, L]`, 1.0 at selected positions, else 0.

    Masks are drawn anew on each call, so every epoch sees new masks. Works
    eagerly (NumPy random generator, `seed`) and in `tf.data`.

    Strings become ids exactly as in `PerceiverTextPreprocessor`, which this
    class uses but does not subclass: a classifier loaded from a masked-LM
    preset must not pick this (masking) preprocessor up as its own.

    Args:
        tokenizer, sequence_length, add_special_tokens: see
            `PerceiverTextPreprocessor`.
        mask_selection_rate: probability that a byte is a prediction target.
        mask_token_rate: probability that a target is replaced by `[MASK]`.
        random_token_rate: probability that a target is replaced by a
            random byte.
        seed: optional seed of the eager path's random generator.
    """

    backbone_cls = PerceiverBackbone
    tokenizer_cls = PerceiverTokenizer

    def __init__(
        self,
        tokenizer=None,
        sequence_length=2048,
        add_special_tokens=False,
        mask_selection_rate=0.15,
        mask_token_rate=0.8,
        random_token_rate=0.1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        rates = dict(
            mask_selection_rate=mask_selection_rate,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
        )
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1]. Received: {name}={rate}."
                )
        if mask_token_rate + random_token_rate > 1.0:
            raise ValueError(
                "`mask_token_rate + random_token_rate` must be <= 1. "
                f"Received: {mask_token_rate} + {random_token_rate}."
            )
        self.tokenizer = tokenizer or PerceiverTokenizer()
        self.text_preprocessor = PerceiverTextPreprocessor(
            self.tokenizer, sequence_length, add_special_tokens
        )
        self.sequence_length = sequence_length
        self.add_special_tokens = add_special_tokens
        self.mask_selection_rate = mask_selection_rate
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def _masked_numpy(self, token_ids, padding_mask):
        token_ids = np.asarray(keras.ops.convert_to_numpy(token_ids))
        padding_mask = np.asarray(keras.ops.convert_to_numpy(padding_mask))
        rng = self._rng
        selected = padding_mask & (
            rng.random(token_ids.shape) < self.mask_selection_rate
        )
        choice = rng.random(token_ids.shape)
        random_bytes = rng.integers(
            NUM_SPECIAL_TOKENS, VOCABULARY_SIZE, token_ids.shape
        )
        masked = np.where(
            choice < self.mask_token_rate,
            self.tokenizer.mask_token_id,
            np.where(
                choice < self.mask_token_rate + self.random_token_rate,
                random_bytes,
                token_ids,
            ),
        )
        masked = np.where(selected, masked, token_ids).astype(token_ids.dtype)
        return masked, selected.astype("float32")

    def _masked_tf(self, token_ids, padding_mask):
        # Only reached inside tf.data / tf.function: inputs are tf tensors.
        shape = tf.shape(token_ids)
        selected = tf.logical_and(
            padding_mask, tf.random.uniform(shape) < self.mask_selection_rate
        )
        choice = tf.random.uniform(shape)
        random_bytes = tf.random.uniform(
            shape, NUM_SPECIAL_TOKENS, VOCABULARY_SIZE, dtype=token_ids.dtype
        )
        mask_ids = tf.fill(shape, tf.cast(self.tokenizer.mask_token_id,
                                          token_ids.dtype))
        masked = tf.where(
            choice < self.mask_token_rate,
            mask_ids,
            tf.where(
                choice < self.mask_token_rate + self.random_token_rate,
                random_bytes,
                token_ids,
            ),
        )
        masked = tf.where(selected, masked, token_ids)
        return masked, tf.cast(selected, "float32")

    def call(self, x, y=None, sample_weight=None):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "`PerceiverMaskedLMPreprocessor` makes labels and weights "
                "from the text: pass strings only. Received y or "
                "sample_weight."
            )
        x = self.text_preprocessor(x)
        token_ids, padding_mask = x["inputs"], x["padding_mask"]
        if self._use_tf_workflow():
            masked, weights = self._masked_tf(token_ids, padding_mask)
        else:
            masked, weights = self._masked_numpy(token_ids, padding_mask)
            masked, weights, token_ids = convert_preprocessing_outputs_python(
                (masked, weights, keras.ops.convert_to_numpy(token_ids))
            )
        x = {"inputs": masked, "padding_mask": padding_mask}
        return keras.utils.pack_x_y_sample_weight(x, token_ids, weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_special_tokens": self.add_special_tokens,
                "mask_selection_rate": self.mask_selection_rate,
                "mask_token_rate": self.mask_token_rate,
                "random_token_rate": self.random_token_rate,
                "seed": self.seed,
            }
        )
        return config
