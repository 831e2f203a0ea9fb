"""Perceiver AR training metrics: bits per token (byte) and perplexity,
against NumPy."""

import keras
import numpy as np
import pytest

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


def test_prefix_dropout_keeps_an_ordered_subset_of_the_prefix():
    """With no positions at all (no rotary, no position table) a row with
    prefix dropout computes exactly what the model computes on that row
    with the dropped prefix tokens removed; one of the C(4, 2) subsets."""
    from itertools import combinations

    config = dict(vocabulary_size=40, hidden_dim=8, num_layers=1,
                  num_heads=2, max_sequence_length=8, max_latents=2,
                  position_embedding=None, rotary_fraction=0.0)
    keras.utils.set_random_seed(0)
    dropped = PerceiverARBackbone(**config, prefix_dropout=0.5)
    plain = PerceiverARBackbone(**config)
    plain.set_weights(dropped.get_weights()[:len(plain.weights)])
    ids = np.random.default_rng(0).integers(1, 40, (3, 6)).astype("int32")
    out = keras.ops.convert_to_numpy(dropped(
        {"token_ids": ids, "padding_mask": np.ones((3, 6), bool)},
        training=True))
    for row in range(3):
        matches = []
        for kept in combinations(range(4), 2):
            sub = ids[row:row + 1, list(kept) + [4, 5]]
            expected = keras.ops.convert_to_numpy(plain(
                {"token_ids": sub, "padding_mask": np.ones((1, 4), bool)}))
            if np.abs(expected[0] - out[row]).max() < 1e-5:
                matches.append(kept)
        assert len(matches) == 1, (row, matches)
    # Evaluation and prediction see the whole prefix.
    full = {"token_ids": ids, "padding_mask": np.ones((3, 6), bool)}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(dropped(full)),
        keras.ops.convert_to_numpy(plain(full)), atol=1e-6)


def test_deepmind_prefix_dropout_masks_a_random_subset_of_prefix_keys():
    """Key masking (DeepMind's): with no positions, a row computes what the
    model computes with some subset of its prefix removed (any size: each
    key drops on its own); the latents' keys are never masked, and about
    `prefix_dropout` of the prefix keys are."""
    from itertools import combinations

    config = dict(vocabulary_size=40, hidden_dim=8, num_layers=1,
                  num_heads=2, max_sequence_length=8, max_latents=2,
                  position_embedding=None, rotary_fraction=0.0)
    keras.utils.set_random_seed(0)
    masked = PerceiverARBackbone(**config, prefix_dropout=0.5,
                                 prefix_dropout_kind="deepmind")
    plain = PerceiverARBackbone(**config)
    plain.set_weights(masked.get_weights()[:len(plain.weights)])
    ids = np.random.default_rng(0).integers(1, 40, (4, 6)).astype("int32")
    full = {"token_ids": ids, "padding_mask": np.ones((4, 6), bool)}
    out = keras.ops.convert_to_numpy(masked(full, training=True))
    subsets = [kept for size in range(5) for kept in combinations(range(4),
                                                                  size)]
    for row in range(4):
        matches = []
        for kept in subsets:
            sub = ids[row:row + 1, list(kept) + [4, 5]]
            expected = keras.ops.convert_to_numpy(plain(
                {"token_ids": sub,
                 "padding_mask": np.ones((1, sub.shape[1]), bool)}))
            if np.abs(expected[0] - out[row]).max() < 1e-5:
                matches.append(kept)
        assert len(matches) == 1, (row, matches)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(masked(full)),
        keras.ops.convert_to_numpy(plain(full)), atol=1e-6)

    # The keep mask itself: first latent at 192 of 256 keys, 64 rows.
    index = keras.ops.broadcast_to(
        keras.ops.arange(192, 256, dtype="int32")[None], (64, 64))
    keep = keras.ops.convert_to_numpy(masked.stack._prefix_key_keep(index,
                                                                    256))
    assert keep[:, 192:].all()
    assert abs(1 - keep[:, :192].mean() - 0.5) < 0.03  # sd 0.0045


def test_prefix_dropout_kind_is_checked():
    with pytest.raises(ValueError, match="prefix_dropout_kind"):
        PerceiverARBackbone(vocabulary_size=40, hidden_dim=8, num_layers=1,
                            num_heads=2, max_sequence_length=8, max_latents=2,
                            prefix_dropout=0.5, prefix_dropout_kind="drop")


@pytest.mark.parametrize("remat", [False, True])
def test_chunked_cross_attention_trains_as_the_plain_one(remat):
    """Two SGD steps on a left-padded batch: the streamed cross-attention
    (5-key chunks over a 23-token context, the last one overlapping; with
    `remat` recomputed in the backward pass) gives the plain path's losses
    and weights."""
    config = dict(vocabulary_size=40, hidden_dim=16, num_layers=1,
                  num_heads=2, max_sequence_length=24, max_latents=6)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, (2, 23)).astype("int32")
    mask = np.ones((2, 23), bool)
    mask[1, :4] = False
    x = {"token_ids": ids, "padding_mask": mask}
    y = rng.integers(0, 40, (2, 6)).astype("int32")
    results = []
    weights = None
    for implementation in ("plain", "chunked"):
        backbone = PerceiverARBackbone(
            **config, attention_implementation=implementation,
            key_value_chunk_size=5, remat=remat)
        if weights is None:
            weights = backbone.get_weights()
        backbone.set_weights(weights)
        lm = PerceiverARCausalLM(backbone)
        lm.compile(optimizer=keras.optimizers.SGD(0.5))
        losses = [float(np.asarray(lm.train_on_batch(x, y)).reshape(-1)[0])
                  for _ in range(2)]
        results.append((losses, backbone.get_weights()))
    (plain_losses, plain_weights), (losses, trained) = results
    np.testing.assert_allclose(losses, plain_losses, rtol=2e-5)
    assert losses[1] != losses[0]
    moved = max(np.abs(a - b).max() for a, b in zip(trained, weights))
    assert moved > 1e-2  # the steps did train
    for a, b in zip(trained, plain_weights):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_attention_implementation_is_checked_and_auto_streams_long_contexts():
    for bad in ("fused", "flash"):
        with pytest.raises(ValueError, match="attention_implementation"):
            PerceiverARBackbone(vocabulary_size=40, hidden_dim=8,
                                num_layers=1, num_heads=2,
                                max_sequence_length=8, max_latents=2,
                                attention_implementation=bad)
    backbone = PerceiverARBackbone(vocabulary_size=40, hidden_dim=8,
                                   num_layers=1, num_heads=4,
                                   max_sequence_length=8, max_latents=2)
    attention = backbone.cross_attention_blocks[0].attention
    # 4 heads x 256 latents x L keys: plain up to 2**25 scores.
    assert attention.implementation_for(256, 32768) == "plain"
    assert attention.implementation_for(256, 32769) == "chunked"
    assert attention.implementation_for(256, None) == "chunked"
