"""Language-model metrics: next-token cross-entropy in bits, perplexity.

With the byte tokenizer each token is one byte, so `BitsPerToken` is bits
per byte (special tokens such as `[EOS]` count as one byte each). Pass them
as `weighted_metrics` so that padding (sample weight 0) is left out.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="perceiver_keras")
class BitsPerToken(keras.metrics.Mean):
    """Mean next-token cross-entropy in bits: `-log2 p(target)`, weighted.

    Args:
        from_logits: predictions are logits (the CausalLM's outputs).
    """

    def __init__(self, name="bits_per_token", from_logits=True, **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def update_state(self, y_true, y_pred, sample_weight=None):
        nats = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits)
        return super().update_state(nats / math.log(2.0), sample_weight)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="perceiver_keras")
class Perplexity(BitsPerToken):
    """`2 ** BitsPerToken`: the exponential of the mean cross-entropy."""

    def __init__(self, name="perplexity", from_logits=True, **kwargs):
        super().__init__(name=name, from_logits=from_logits, **kwargs)

    def result(self):
        return ops.power(2.0, super().result())
