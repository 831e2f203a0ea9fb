"""Defects a new user hit (issue 10): validation_split on NumPy data,
constructor arguments, string arrays, another task on a built-in preset,
the renamed conv padding option."""

import json

import keras
import numpy as np
import pytest

from conftest import assert_close
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverMaskedLM
from perceiver_keras import PerceiverTextClassifier
from perceiver_keras.layers import PerceiverArrayAdapter
from perceiver_keras.layers import PerceiverImageAdapter
from perceiver_keras.layers import PerceiverTokenAdapter
from perceiver_keras.models import presets

rng = np.random.default_rng(0)
SMALL = dict(
    inputs_shape=(None, 3), num_latents=4, latent_dim=8, num_blocks=1,
    num_self_attends_per_block=1, num_self_attend_heads=2,
)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return PerceiverClassifier(PerceiverBackbone(**SMALL), num_classes=3)


def test_fit_validation_split_holds_out_the_last_samples(classifier):
    x = rng.normal(size=(20, 5, 3)).astype("float32")
    y = rng.integers(0, 3, 20)
    history = classifier.fit(
        x, y, validation_split=0.25, epochs=2, batch_size=4, verbose=0
    )
    assert len(history.history["val_loss"]) == 2
    # Keras: the last 25% before shuffling, evaluated with the final weights.
    loss, accuracy = classifier.evaluate(x[15:], y[15:], verbose=0)
    assert_close(history.history["val_loss"][-1], loss, rtol=1e-5)
    assert_close(history.history["val_accuracy"][-1], accuracy)


def test_fit_shuffle_false_keeps_the_batch_order(classifier, monkeypatch):
    """`shuffle=False` reads the batches in order (Keras used to shuffle
    the batch order of the internal PyDataset again)."""
    from perceiver_keras.models import perceiver_task

    order = []
    read = perceiver_task._ArrayBatches.__getitem__
    monkeypatch.setattr(perceiver_task._ArrayBatches, "__getitem__",
                        lambda self, i: order.append(i) or read(self, i))
    x = rng.normal(size=(16, 5, 3)).astype("float32")
    y = rng.integers(0, 3, 16)
    for seed in (1, 2, 3):
        keras.utils.set_random_seed(seed)
        order.clear()
        classifier.fit(x, y, epochs=1, batch_size=4, shuffle=False,
                       verbose=0)
        assert order[-4:] == [0, 1, 2, 3], order


@pytest.mark.parametrize("split", [0.95, 1.0, -0.5])  # 0.95: no training sample
def test_fit_validation_split_out_of_range(classifier, split):
    x = rng.normal(size=(8, 5, 3)).astype("float32")
    with pytest.raises(ValueError, match="validation_split"):
        classifier.fit(x, np.zeros(8), validation_split=split, verbose=0)


def test_string_array_names_the_argument(classifier):
    strings = np.full((2, 5, 3), "a")
    with pytest.raises(ValueError, match=r"`inputs` must hold float data"
                       r".*string data of dtype <U1"):
        classifier.predict(strings, verbose=0)
    mask = np.full((2, 5), "yes")
    with pytest.raises(ValueError, match="`padding_mask` must be a bool"):
        classifier.predict(
            {"inputs": np.zeros((2, 5, 3), "float32"), "padding_mask": mask},
            verbose=0,
        )


@pytest.mark.parametrize(
    "overrides,argument",
    [
        (dict(num_latents=0), "num_latents"),
        (dict(latent_dim=-8), "latent_dim"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(num_self_attends_per_block=1.5), "num_self_attends_per_block"),
        (dict(num_self_attend_heads=0), "num_self_attend_heads"),
        (dict(num_cross_attend_heads=-1), "num_cross_attend_heads"),
        (dict(self_attend_widening_factor=0), "self_attend_widening_factor"),
        (dict(cross_attention_qk_channels=0), "cross_attention_qk_channels"),
        (dict(dropout=1.0), "dropout"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(latent_dim=10, num_self_attend_heads=3), "num_self_attend_heads"),
        (dict(num_cross_attend_heads=2), "num_cross_attend_heads"),
        (dict(attention_implementation="fast"), "attention_implementation"),
    ],
)
def test_backbone_constructor_arguments_are_checked(overrides, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        # Token width 3 (raw points) is not divisible by 2 cross heads.
        PerceiverBackbone(**{**SMALL, **overrides})


@pytest.mark.parametrize(
    "options,argument",
    [(dict(num_classes=0), "num_classes"),
     (dict(num_classes=3, pooling="max"), "pooling"),
     (dict(num_classes=3, decoder_num_heads=0), "decoder_num_heads")],
)
def test_classifier_constructor_arguments_are_checked(options, argument):
    backbone = PerceiverBackbone(**SMALL)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        PerceiverClassifier(backbone, **options)


def test_adapter_option_strings_are_checked():
    with pytest.raises(ValueError, match="`position_encoding`.*'sine'"):
        PerceiverArrayAdapter(position_encoding="sine")
    with pytest.raises(ValueError, match="`prep_type`.*'conv3x3'"):
        PerceiverImageAdapter(prep_type="conv3x3")
    with pytest.raises(ValueError, match="`conv_padding`.*'reflect'"):
        PerceiverImageAdapter(
            prep_type="conv", spatial_downsample=4, num_channels=4,
            conv_padding="reflect",
        )


def test_legacy_conv_padding_name_loads_as_the_new_one():
    options = dict(prep_type="conv", spatial_downsample=4, num_channels=4,
                   num_bands=2, max_resolution=(3, 3))
    old = PerceiverImageAdapter(conv_padding="symmetric", **options)
    assert old.conv_padding == "pad_then_valid_pool"
    config = {**old.get_config(), "conv_padding": "symmetric"}  # saved once
    restored = PerceiverImageAdapter.from_config(config)
    assert restored.get_config()["conv_padding"] == "pad_then_valid_pool"
    x = rng.normal(size=(1, 12, 12, 3)).astype("float32")
    old.build(x.shape)
    restored.build(x.shape)
    restored.set_weights(old.get_weights())
    assert_close(restored(x), old(x))


def test_text_classifier_from_a_masked_lm_builtin_without_weights(
    monkeypatch, tmp_path
):
    """Any task on a built-in's backbone builds offline, as from a
    converted copy (here a tiny stand-in for perceiver_io_language_bytes)."""
    backbone = PerceiverBackbone(
        inputs_shape=(16,), input_adapter=PerceiverTokenAdapter(262, 8, 16),
        num_latents=4, latent_dim=8, num_self_attends_per_block=1,
        num_self_attend_heads=2, num_cross_attend_heads=2,
    )
    mlm = PerceiverMaskedLM(backbone, decoder_num_heads=2)
    name = "tiny_language_bytes_for_test"
    path = tmp_path / "perceiver_io" / f"{name}.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"keras_config": presets.keras_config(mlm)}))
    files = {**presets._builtin_files(), name: path}
    monkeypatch.setattr(presets, "_builtin_files", lambda: files)
    monkeypatch.setenv("PERCEIVER_KERAS_HOME", str(tmp_path / "none"))

    classifier = PerceiverTextClassifier.from_preset(
        name, load_weights=False, num_classes=3
    )
    assert isinstance(classifier, PerceiverTextClassifier)
    assert classifier.num_classes == 3
    assert classifier.backbone.inputs_shape == (16,)
    assert classifier.preprocessor.sequence_length == 16
    probs = classifier.predict(["some text", "more"], verbose=0)
    assert probs.shape == (2, 3)
