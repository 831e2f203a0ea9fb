"""PerceiverMaskedLM: fill_mask against DeepMind's logits, tied logits,
preset round trip with the tokenizer, masked-LM preprocessing and fit."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras.conversion.deepmind import convert_deepmind
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.layers.adapters import PerceiverImageAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.perceiver_io.perceiver_masked_lm_preprocessor import (
    PerceiverMaskedLMPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "deepmind" / "mlm-public"
MASK = 3


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The mlm fixture converted to a preset; `(task, preset_dir)`."""
    config = json.loads((FIXTURE / "config.json").read_text())
    preset = tmp_path_factory.mktemp("mlm") / "preset"
    task = convert_deepmind(FIXTURE / config["checkpoint"], config, preset)
    return task, preset


def fixture_arrays(which):
    with np.load(FIXTURE / f"{which}.npz") as data:
        return dict(data)


def test_fill_mask_completes_text_with_deepmind_predictions(converted):
    """Masked bytes are replaced by the argmax of DeepMind's own logits."""
    task, _ = converted
    inputs, reference = fixture_arrays("inputs"), fixture_arrays("outputs")
    texts = [str(t) for t in inputs["texts"]]
    masked_texts, expected = [], []
    for text, ids, logits in zip(texts, inputs["token_ids"],
                                 reference["logits"]):
        data = text.encode("utf-8")
        positions = np.flatnonzero(ids == MASK)
        # The fixture masks one run of bytes.
        assert len(positions) and np.all(np.diff(positions) == 1)
        predicted = logits[positions, 6:].argmax(-1)  # byte ids only
        filled = bytearray(data)
        filled[positions[0]:positions[-1] + 1] = bytes(predicted.tolist())
        expected.append(bytes(filled).decode("utf-8", errors="replace"))
        masked_texts.append(
            data[:positions[0]].decode() + "[MASK]" * len(positions)
            + data[positions[-1] + 1:].decode()
        )
    assert task.fill_mask(masked_texts) == expected
    assert task.fill_mask(masked_texts[0]) == expected[0]
    # Any placeholder string works the same way.
    custom = masked_texts[1].replace("[MASK]", "<?>")
    assert task.fill_mask(custom, mask_token="<?>") == expected[1]


def test_fill_mask_rejects_bad_input(converted):
    task, _ = converted
    with pytest.raises(ValueError, match="text"):
        task.fill_mask("x" * (task.sequence_length + 1))
    with pytest.raises(ValueError, match="text"):
        task.fill_mask(42)
    with pytest.raises(ValueError, match="mask_token"):
        task.fill_mask("abc", mask_token="")


def test_tied_logits_are_hidden_times_embedding_plus_bias(converted):
    task, _ = converted
    embedding = to_numpy(task.backbone.input_adapter.token_embedding.embeddings)
    bias = to_numpy(task.logits.bias)
    hidden = np.random.default_rng(0).normal(size=(2, 3, embedding.shape[1]))
    hidden = hidden.astype("float32")
    assert_close(task.logits(hidden), hidden @ embedding.T + bias)


def test_padded_positions_do_not_change_valid_logits(converted):
    task, _ = converted
    inputs = fixture_arrays("inputs")
    mask = inputs["input_mask"].astype(bool)
    ids = inputs["token_ids"]
    garbage = np.where(mask, ids, 100 + np.arange(ids.shape[1]) % 50)
    clean = to_numpy(task({"inputs": ids, "padding_mask": mask}))
    noisy = to_numpy(task({"inputs": garbage, "padding_mask": mask}))
    assert_close(noisy[mask], clean[mask])


def test_preset_keeps_tokenizer_and_preprocessor(converted):
    task, preset = converted
    reloaded = PerceiverMaskedLM.from_preset(str(preset))
    assert isinstance(reloaded.preprocessor, PerceiverMaskedLMPreprocessor)
    assert reloaded.preprocessor.sequence_length == task.sequence_length
    tokenizer = PerceiverTokenizer.from_preset(str(preset))
    assert tokenizer.vocabulary_size() == 262
    assert to_numpy(tokenizer("é")).tolist() == [0xC3 + 6, 0xA9 + 6]
    text = "Perceiver [MASK][MASK] bytes"
    assert reloaded.fill_mask(text) == task.fill_mask(text)


def test_requires_a_token_backbone():
    backbone = PerceiverBackbone(
        inputs_shape=(4, 4, 3),
        input_adapter=PerceiverImageAdapter(num_bands=2),
        num_latents=2, latent_dim=8, num_self_attends_per_block=1,
        num_self_attend_heads=1,
    )
    with pytest.raises(ValueError, match="PerceiverTokenAdapter"):
        PerceiverMaskedLM(backbone)


def test_preprocessor_masks_only_selected_bytes():
    pre = PerceiverMaskedLMPreprocessor(
        sequence_length=12, mask_selection_rate=1.0, mask_token_rate=1.0,
        random_token_rate=0.0,
    )
    x, y, weights = pre(["héllo", "ab"])
    expected = [[b + 6 for b in "héllo".encode()], [b + 6 for b in b"ab"]]
    expected = [ids + [0] * (12 - len(ids)) for ids in expected]
    valid = np.array(expected) > 0
    assert to_numpy(y).tolist() == expected
    assert to_numpy(weights).tolist() == valid.astype("float32").tolist()
    assert to_numpy(x["padding_mask"]).tolist() == valid.tolist()
    assert to_numpy(x["inputs"]).tolist() == np.where(valid, MASK, 0).tolist()

    # Random replacements are bytes; unselected positions are untouched.
    pre = PerceiverMaskedLMPreprocessor(
        sequence_length=64, mask_selection_rate=0.5, mask_token_rate=0.0,
        random_token_rate=1.0, seed=3,
    )
    text = "the quick brown fox jumps over the lazy dog"
    x, y, weights = pre([text])
    ids, y, weights = to_numpy(x["inputs"]), to_numpy(y), to_numpy(weights)
    assert 0 < weights.sum() < len(text)
    assert np.all(ids[weights == 0] == y[weights == 0])
    assert np.all((ids[weights == 1] >= 6) & (ids[weights == 1] < 262))


def test_preprocessor_runs_in_tf_data():
    import tensorflow as tf

    pre = PerceiverMaskedLMPreprocessor(
        sequence_length=8, mask_selection_rate=1.0, mask_token_rate=1.0,
        random_token_rate=0.0,
    )
    dataset = tf.data.Dataset.from_tensor_slices(["abc", "de"]).batch(2)
    x, y, weights = next(iter(dataset.map(pre)))
    assert y.numpy().tolist() == [[103, 104, 105, 0, 0, 0, 0, 0],
                                  [106, 107, 0, 0, 0, 0, 0, 0]]
    assert x["inputs"].numpy().tolist() == [[3, 3, 3, 0, 0, 0, 0, 0],
                                            [3, 3, 0, 0, 0, 0, 0, 0]]
    assert weights.numpy().sum() == 5


def test_fit_on_strings_reduces_the_loss():
    keras.utils.set_random_seed(1)
    length = 16
    backbone = PerceiverBackbone(
        inputs_shape=(length,),
        input_adapter=PerceiverTokenAdapter(262, 16, length),
        num_latents=4, latent_dim=16, num_self_attends_per_block=1,
        num_self_attend_heads=2, num_cross_attend_heads=2,
    )
    task = PerceiverMaskedLM(
        backbone, decoder_num_heads=2,
        preprocessor=PerceiverMaskedLMPreprocessor(
            sequence_length=length, mask_selection_rate=0.3, seed=0
        ),
    )
    task.compile(optimizer=keras.optimizers.Adam(1e-2))
    texts = ["abcabcabcabc", "xyzxyzxyzxyz"] * 8
    history = task.fit(texts, epochs=6, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
