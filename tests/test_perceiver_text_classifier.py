"""PerceiverTextClassifier: learns from (text, label) pairs, masks padding,
round-trips through a preset with its preprocessor."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras.conversion.deepmind import convert_deepmind
from perceiver_keras.layers.adapters import PerceiverArrayAdapter
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
    PerceiverTextClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)

LENGTH = 24


def small_classifier(num_classes=2):
    backbone = PerceiverBackbone(
        inputs_shape=(LENGTH,),
        input_adapter=PerceiverTokenAdapter(262, 32, LENGTH),
        num_latents=8, latent_dim=32, num_self_attends_per_block=1,
        num_self_attend_heads=2, num_cross_attend_heads=2,
    )
    return PerceiverTextClassifier(
        backbone, num_classes,
        preprocessor=PerceiverTextPreprocessor(sequence_length=LENGTH),
    )


def sentiment_data(size, seed):
    """Short reviews whose label is carried by one word."""
    rng = np.random.default_rng(seed)
    good = ["good", "great", "fine", "nice"]
    bad = ["bad", "awful", "poor", "dull"]
    subjects = ["film", "book", "meal", "song"]
    labels = np.arange(size) % 2
    texts = [
        f"the {rng.choice(subjects)} was {rng.choice(good if y else bad)}"
        for y in labels
    ]
    return texts, labels.tolist()


def test_fit_on_text_label_pairs_learns():
    keras.utils.set_random_seed(2)
    classifier = small_classifier()
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3))
    texts, labels = sentiment_data(64, seed=0)
    history = classifier.fit(texts, labels, epochs=8, batch_size=16,
                             verbose=0)
    assert history.history["loss"][-1] < 0.3 * history.history["loss"][0]
    test_texts, test_labels = sentiment_data(32, seed=1)
    predicted = classifier.predict(test_texts, verbose=0).argmax(-1)
    assert (predicted == np.array(test_labels)).mean() >= 0.9
    scores = classifier.evaluate(test_texts, test_labels, verbose=0,
                                 return_dict=True)
    assert scores["accuracy"] >= 0.9


def test_padding_does_not_change_logits():
    classifier = small_classifier()
    x = classifier.preprocessor(["a short text", "another one"])
    ids, mask = to_numpy(x["inputs"]), to_numpy(x["padding_mask"])
    garbage = np.where(mask, ids, 200)
    assert_close(
        classifier({"inputs": garbage, "padding_mask": mask}),
        to_numpy(classifier({"inputs": ids, "padding_mask": mask})),
    )


def test_preset_round_trip_keeps_predictions(tmp_path):
    classifier = small_classifier(num_classes=3)
    classifier.save_to_preset(str(tmp_path))
    reloaded = PerceiverTextClassifier.from_preset(str(tmp_path))
    assert isinstance(reloaded.preprocessor, PerceiverTextPreprocessor)
    texts = ["the song was great", "é ü ✓"]
    assert_close(
        reloaded.predict(texts, verbose=0), classifier.predict(texts, verbose=0)
    )


def test_requires_a_token_backbone():
    backbone = PerceiverBackbone(
        inputs_shape=(None, 3),
        input_adapter=PerceiverArrayAdapter(position_encoding=None),
        num_latents=2, latent_dim=8, num_self_attends_per_block=1,
        num_self_attend_heads=1,
    )
    with pytest.raises(ValueError, match="PerceiverTokenAdapter"):
        PerceiverTextClassifier(backbone, num_classes=2)


def test_starts_from_the_masked_lm_encoder(tmp_path):
    """A classifier loaded from a masked-LM preset reuses its encoder."""
    fixture = Path(__file__).parent / "fixtures" / "deepmind" / "mlm-public"
    config = json.loads((fixture / "config.json").read_text())
    mlm = convert_deepmind(fixture / config["checkpoint"], config, tmp_path)
    classifier = PerceiverTextClassifier.from_preset(str(tmp_path),
                                                     num_classes=3)
    # Not the masked-LM preprocessor, which would mask the texts.
    assert type(classifier.preprocessor) is PerceiverTextPreprocessor
    assert classifier.preprocessor.sequence_length == mlm.sequence_length
    for loaded, converted in zip(classifier.backbone.weights,
                                 mlm.backbone.weights):
        np.testing.assert_array_equal(to_numpy(loaded), to_numpy(converted))
    assert classifier.predict(["some text"], verbose=0).shape == (1, 3)
