"""krasserm's clm-base tokenizer: SentencePiece with XLNet's normalization.

The released `spiece.model` (xlnet-base-cased) cannot be downloaded here,
so each test trains a small SentencePiece model with the same special
pieces and checks our tokenizer against transformers' `XLNetTokenizer` on
that file, then converts the krasserm fixture with the file beside it (the
layout of a `save_pretrained` directory holding model and tokenizer).
"""

import io
import os
import shutil

import numpy as np
import pytest

from perceiver_keras import PerceiverARSentencePieceTokenizer
from perceiver_keras.conversion import perceiver_ar as conversion

KRASSERM = os.path.join(os.path.dirname(__file__), "fixtures", "perceiver_ar",
                        "krasserm", "clm", "checkpoint")
# xlnet-base-cased's first pieces, in its order (ids 0-8).
XLNET_SPECIAL = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Perceiver AR reads a long context through a few latents.",
    "Cafe naive resume: 1,000,000 numbers, 3,5 and \"quoted\" words.",
    "A small model for a small test of the tokenizer.",
]
# Whitespace runs, tabs and newlines, accents, `` and '' quotes, digits
# with commas: each is a step of XLNet's normalization.
TEXTS = ["  Café   naïve,\t1,000 words ``quoted''  ", "The quick brown fox.",
         "A\nlong\n\ncontext résumé", ""]


def train_proto(control_symbols=XLNET_SPECIAL, vocab_size=60):
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10), model_writer=model,
        vocab_size=vocab_size, model_type="unigram", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, control_symbols=control_symbols,
        minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module", params=["spiece.model", "tokenizer.json"])
def clm_directory(request, tmp_path_factory):
    """The krasserm fixture with its tokenizer beside the weights: the
    SentencePiece model (as transformers 4 saves an XLNet tokenizer, and
    clm-base's hub repo holds it) or only the `tokenizer.json` that
    transformers 5's `save_pretrained` writes."""
    from transformers import XLNetTokenizer

    directory = tmp_path_factory.mktemp("clm") / "checkpoint"
    shutil.copytree(KRASSERM, directory)
    (directory / "spiece.model").write_bytes(train_proto())
    if request.param == "tokenizer.json":
        XLNetTokenizer.from_pretrained(str(directory)).save_pretrained(
            str(directory))
        (directory / "spiece.model").unlink()
        assert (directory / "tokenizer.json").is_file()
    return directory


def test_ids_equal_transformers_xlnet_tokenizer(clm_directory):
    from transformers import XLNetTokenizer

    reference = XLNetTokenizer.from_pretrained(str(clm_directory))
    tokenizer = conversion.convert_krasserm(
        str(clm_directory)).preprocessor.tokenizer
    expected = reference(TEXTS, add_special_tokens=False)["input_ids"]
    assert tokenizer.tokenize(TEXTS) == expected
    assert tokenizer.tokenize(np.array(TEXTS)) == expected
    assert tokenizer.tokenize(TEXTS[1]).tolist() == expected[1]
    assert (tokenizer.start_token_id, tokenizer.end_token_id,
            tokenizer.pad_token_id) == (reference.bos_token_id,
                                        reference.eos_token_id,
                                        reference.pad_token_id)
    assert tokenizer.detokenize(expected[1:3]) == reference.batch_decode(
        expected[1:3])


def test_a_vocabulary_without_xlnet_special_pieces_is_refused():
    with pytest.raises(ValueError, match="<pad>"):
        PerceiverARSentencePieceTokenizer(
            proto=train_proto(control_symbols=["<cls>", "<sep>"]))


def test_converted_directory_generates_from_text(clm_directory, tmp_path):
    from keras_hub.models import CausalLM
    from keras_hub.samplers import GreedySampler
    from transformers import XLNetTokenizer

    from perceiver_keras.conversion.common import save_preset_atomically

    model, _ = conversion.convert(str(clm_directory))
    save_preset_atomically(model, str(tmp_path / "preset"))
    loaded = CausalLM.from_preset(str(tmp_path / "preset"))
    assert isinstance(loaded.preprocessor.tokenizer,
                      PerceiverARSentencePieceTokenizer)
    prompt = "The quick brown fox"
    ids = XLNetTokenizer.from_pretrained(str(clm_directory))(
        prompt, add_special_tokens=False)["input_ids"]
    assert loaded.preprocessor.generate_preprocess(
        [prompt])["token_ids"][0, :len(ids)].tolist() == ids
    loaded.compile(sampler=GreedySampler())
    text = loaded.generate(prompt, max_length=len(ids) + 6)
    # The same prompt as ids (no preprocessor): the same greedy tokens.
    loaded.preprocessor = None
    generated = loaded.generate(
        {"token_ids": np.array([ids + [0] * 6], "int32"),
         "padding_mask": np.array([[True] * len(ids) + [False] * 6])},
        max_length=len(ids) + 6)
    tokens = np.asarray(generated["token_ids"])[0].tolist()
    assert np.asarray(generated["padding_mask"]).sum() > len(ids)  # generated
    assert text == model.preprocessor.tokenizer.detokenize(tokens)
    assert text.startswith(prompt)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    directory = tmp_path / "checkpoint"
    shutil.copytree(KRASSERM, directory)
    (directory / "spiece.model").write_bytes(train_proto(vocab_size=72))
    with pytest.raises(ValueError, match="72 pieces.*64 ids"):
        conversion.convert(str(directory))
