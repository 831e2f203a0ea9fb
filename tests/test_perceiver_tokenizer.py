"""Tests for PerceiverTokenizer and PerceiverTextPreprocessor."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer

TEXTS = [
    "Hello, world!",
    "Café naïve résumé",
    "日本語のテキスト",
    "emoji 😀👍🏽 mixed",
    "",
]
LONG_TEXT = "Perceiver ünïcödé 😀 " * 120  # > 2048 bytes
assert len(LONG_TEXT.encode("utf-8")) > 2048


def to_np(x):
    if keras.ops.is_tensor(x):
        return keras.ops.convert_to_numpy(x)
    return np.asarray(x)


def expected_ids(text):
    return [b + 6 for b in text.encode("utf-8")]


# Tokenizer.


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_single_string(text):
    ids = PerceiverTokenizer()(text)
    assert to_np(ids).dtype == np.int32
    assert to_np(ids).tolist() == expected_ids(text)


def test_tokenize_batch_inputs():
    tokenizer = PerceiverTokenizer()
    expected = [expected_ids(t) for t in TEXTS]
    outputs = [
        tokenizer(TEXTS),
        tokenizer(np.array(TEXTS)),
        tokenizer(np.array([t.encode("utf-8") for t in TEXTS])),
        tokenizer(tf.constant(TEXTS)),
    ]
    for ids in outputs:
        assert [list(map(int, row)) for row in ids] == expected


def test_tokenize_sequence_length():
    ids = PerceiverTokenizer(sequence_length=4)(["ab", "abcdef"])
    np.testing.assert_array_equal(
        to_np(ids), [[103, 104, 0, 0], [103, 104, 105, 106]]
    )


def test_detokenize_round_trip():
    tokenizer = PerceiverTokenizer()
    for text in TEXTS + [LONG_TEXT]:
        assert tokenizer.detokenize(tokenizer(text)) == text
    assert tokenizer.detokenize(tokenizer(TEXTS)) == TEXTS


def test_detokenize_drops_special_ids_and_bad_bytes():
    tokenizer = PerceiverTokenizer()
    assert tokenizer.detokenize([4, 110, 111, 5, 0, 0]) == "hi"
    assert tokenizer.detokenize(np.array([[1, 110, 2], [3, 111, 0]])) == [
        "h",
        "i",
    ]
    # 0xFF is invalid UTF-8: replaced with U+FFFD.
    assert tokenizer.detokenize([110, 0xFF + 6, 111]) == "h\ufffdi"


def test_vocabulary_and_special_tokens():
    tokenizer = PerceiverTokenizer()
    assert tokenizer.vocabulary_size() == 262
    assert len(tokenizer.get_vocabulary()) == 262
    special = dict(pad=0, bos=1, eos=2, mask=3, cls=4, sep=5)
    for name, id in special.items():
        assert getattr(tokenizer, f"{name}_token_id") == id
        token = getattr(tokenizer, f"{name}_token")
        assert tokenizer.token_to_id(token) == id
        assert tokenizer.id_to_token(id) == token
    assert sorted(tokenizer.special_token_ids) == list(range(6))
    assert tokenizer.token_to_id("a") == ord("a") + 6
    assert tokenizer.id_to_token(ord("a") + 6) == "a"
    assert tokenizer.id_to_token(261) == chr(255)
    with pytest.raises(ValueError, match="id"):
        tokenizer.id_to_token(262)
    with pytest.raises(ValueError, match="token"):
        tokenizer.token_to_id("ab")


def test_vocabulary_matches_transformers():
    from transformers import PerceiverTokenizer as HFPerceiverTokenizer

    hf = HFPerceiverTokenizer()
    tokenizer = PerceiverTokenizer()
    vocab = tokenizer.get_vocabulary()
    assert {token: i for i, token in enumerate(vocab)} == hf.get_vocab()
    for name in ["pad", "bos", "eos", "mask", "cls", "sep"]:
        assert getattr(tokenizer, f"{name}_token_id") == getattr(
            hf, f"{name}_token_id"
        )


@pytest.mark.parametrize("bad", [5, 1.5, [1, 2], None])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError, match="`inputs` must be a string.*Received"):
        PerceiverTokenizer()(bad)


def test_tokenizer_in_tf_data():
    tokenizer = PerceiverTokenizer()
    ds = tf.data.Dataset.from_tensor_slices(TEXTS)
    # Map then batch (scalar strings, incl. the empty string).
    unbatched = [x.numpy().tolist() for x in ds.map(tokenizer)]
    assert unbatched == [expected_ids(t) for t in TEXTS]
    # Batch then map (ragged output), then detokenize in the graph too.
    ragged = ds.batch(len(TEXTS)).map(tokenizer).get_single_element()
    assert ragged.to_list() == [expected_ids(t) for t in TEXTS]
    texts = ds.batch(len(TEXTS)).map(tokenizer).map(tokenizer.detokenize)
    decoded = texts.get_single_element().numpy().tolist()
    assert [t.decode("utf-8") for t in decoded] == TEXTS


def test_tokenizer_serialization_and_preset(tmp_path):
    tokenizer = PerceiverTokenizer(sequence_length=16)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(tokenizer)
    )
    assert isinstance(restored, PerceiverTokenizer)
    assert restored.get_config() == tokenizer.get_config()

    tokenizer.save_to_preset(str(tmp_path))
    assert (tmp_path / "tokenizer.json").exists()
    loaded = PerceiverTokenizer.from_preset(str(tmp_path))
    assert loaded.get_config() == tokenizer.get_config()
    np.testing.assert_array_equal(
        to_np(loaded("héllo")), to_np(tokenizer("héllo"))
    )


# Preprocessor.


def test_preprocessor_deepmind_framing():
    preprocessor = PerceiverTextPreprocessor(sequence_length=8)
    out = preprocessor(["abc", "", "abcdefghij"])
    ids, mask = to_np(out["inputs"]), to_np(out["padding_mask"])
    assert ids.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(
        ids,
        [
            [103, 104, 105, 0, 0, 0, 0, 0],
            [0] * 8,
            expected_ids("abcdefgh"),
        ],
    )
    np.testing.assert_array_equal(mask, ids != 0)


def test_preprocessor_default_length_and_unbatched():
    preprocessor = PerceiverTextPreprocessor()
    assert preprocessor.sequence_length == 2048
    assert not preprocessor.add_special_tokens
    out = preprocessor("héllo")
    assert to_np(out["inputs"]).shape == (2048,)
    assert to_np(out["inputs"])[:6].tolist() == expected_ids("héllo")
    assert int(to_np(out["padding_mask"]).sum()) == 6


def test_preprocessor_transformers_framing():
    preprocessor = PerceiverTextPreprocessor(
        sequence_length=6, add_special_tokens=True
    )
    out = preprocessor(["ab", "abcdefgh", ""])
    np.testing.assert_array_equal(
        to_np(out["inputs"]),
        [
            [4, 103, 104, 5, 0, 0],
            [4, 103, 104, 105, 106, 5],  # [SEP] kept last.
            [4, 5, 0, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(
        to_np(out["padding_mask"]),
        [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]],
    )


def test_preprocessor_passes_labels():
    preprocessor = PerceiverTextPreprocessor(sequence_length=4)
    x, y, sw = preprocessor(["a", "b"], np.array([1, 0]), np.array([1.0, 2.0]))
    assert set(x) == {"inputs", "padding_mask"}
    np.testing.assert_array_equal(to_np(y), [1, 0])
    np.testing.assert_array_equal(to_np(sw), [1.0, 2.0])


def test_parity_with_transformers():
    from transformers import PerceiverTokenizer as HFPerceiverTokenizer

    texts = TEXTS + [LONG_TEXT]
    hf = HFPerceiverTokenizer()(
        texts, padding="max_length", truncation=True, max_length=2048
    )
    out = PerceiverTextPreprocessor(add_special_tokens=True)(texts)
    ids = to_np(out["inputs"])
    assert ids.shape == (len(texts), 2048)
    np.testing.assert_array_equal(ids, np.array(hf["input_ids"]))
    np.testing.assert_array_equal(
        to_np(out["padding_mask"]).astype(int), np.array(hf["attention_mask"])
    )
    assert ids[-1, -1] == 5  # Over-long text still ends with [SEP].


def test_preprocessor_in_tf_data():
    preprocessor = PerceiverTextPreprocessor(
        sequence_length=32, add_special_tokens=True
    )
    texts = TEXTS + [LONG_TEXT]
    labels = np.arange(len(texts))
    eager = preprocessor(texts)
    ds = tf.data.Dataset.from_tensor_slices((texts, labels))
    for pipeline in [
        ds.map(preprocessor).batch(len(texts)),
        ds.batch(len(texts)).map(preprocessor),
    ]:
        x, y = pipeline.get_single_element()
        assert x["inputs"].dtype == tf.int32
        assert x["padding_mask"].dtype == tf.bool
        np.testing.assert_array_equal(
            x["inputs"].numpy(), to_np(eager["inputs"])
        )
        np.testing.assert_array_equal(
            x["padding_mask"].numpy(), to_np(eager["padding_mask"])
        )
        np.testing.assert_array_equal(y.numpy(), labels)


def test_preprocessor_serialization_and_preset(tmp_path):
    preprocessor = PerceiverTextPreprocessor(
        tokenizer=PerceiverTokenizer(),
        sequence_length=64,
        add_special_tokens=True,
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(preprocessor)
    )
    assert isinstance(restored, PerceiverTextPreprocessor)
    assert isinstance(restored.tokenizer, PerceiverTokenizer)
    assert restored.get_config() == preprocessor.get_config()

    preprocessor.save_to_preset(str(tmp_path))
    loaded = PerceiverTextPreprocessor.from_preset(str(tmp_path))
    assert isinstance(loaded.tokenizer, PerceiverTokenizer)
    assert loaded.sequence_length == 64 and loaded.add_special_tokens
    np.testing.assert_array_equal(
        to_np(loaded("héllo")["inputs"]), to_np(preprocessor("héllo")["inputs"])
    )
    # Keyword overrides still apply when loading.
    short = PerceiverTextPreprocessor.from_preset(
        str(tmp_path), sequence_length=8
    )
    assert to_np(short(["abc"])["inputs"]).shape == (1, 8)
