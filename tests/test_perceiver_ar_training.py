"""Perceiver AR training metrics: bits per token (byte) and perplexity,
against NumPy."""

import keras
import numpy as np

from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm import (
    PerceiverARCausalLM,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E501
    PerceiverARCausalLMPreprocessor,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_metrics import (
    BitsPerToken,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_metrics import (
    Perplexity,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_tokenizer import (
    PerceiverARTokenizer,
)


def numpy_nats(logits, targets):
    logits = logits.astype("float64")
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def test_bits_and_perplexity_are_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 3, 7)).astype("float32")
    targets = rng.integers(0, 7, (2, 3))
    weights = np.array([[1, 1, 0], [0, 1, 1]], "float32")
    nats = numpy_nats(logits, targets)
    mean = (nats * weights).sum() / weights.sum()
    bits, perplexity = BitsPerToken(), Perplexity()
    for metric in (bits, perplexity):
        # two updates: the mean runs over every weighted token seen
        metric.update_state(targets[:1], logits[:1], weights[:1])
        metric.update_state(targets[1:], logits[1:], weights[1:])
    np.testing.assert_allclose(float(bits.result()), mean / np.log(2),
                               rtol=1e-5)
    np.testing.assert_allclose(float(perplexity.result()), np.exp(mean),
                               rtol=1e-5)
    assert BitsPerToken.from_config(bits.get_config()).from_logits


def test_evaluate_reports_bits_per_byte_of_the_latent_positions():
    keras.utils.set_random_seed(0)
    backbone = PerceiverARBackbone(vocabulary_size=262, hidden_dim=8,
                                   num_layers=1, num_heads=2,
                                   max_sequence_length=12, max_latents=4)
    preprocessor = PerceiverARCausalLMPreprocessor(
        PerceiverARTokenizer(), sequence_length=10, num_latents=4)
    lm = PerceiverARCausalLM(backbone, preprocessor=preprocessor)
    texts = ["hello world, hello", "a"]
    result = lm.evaluate(texts, batch_size=2, verbose=0, return_dict=True)
    x, y, w = preprocessor(texts)
    nats = numpy_nats(keras.ops.convert_to_numpy(lm(x)), y)
    mean = (nats * w).sum() / w.sum()  # "a" has padded latent positions
    assert w.sum() < w.size
    np.testing.assert_allclose(result["bits_per_token"], mean / np.log(2),
                               rtol=1e-5)
    np.testing.assert_allclose(result["perplexity"], np.exp(mean), rtol=1e-5)
