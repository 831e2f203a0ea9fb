"""Reloading a trained task gives no warnings the project causes."""

import warnings

import keras
import numpy as np

import perceiver_keras as pk


def tiny_trained_classifier():
    backbone = pk.PerceiverBackbone(
        inputs_shape=(None, 3), num_latents=4, latent_dim=8,
        num_self_attends_per_block=1, num_self_attend_heads=2,
    )
    classifier = pk.PerceiverClassifier(backbone, num_classes=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 3)).astype("float32")
    classifier.fit(x, np.arange(8) % 2, epochs=1, batch_size=4, verbose=0)
    return classifier, x


def test_from_preset_after_fit_is_silent(tmp_path):
    classifier, x = tiny_trained_classifier()
    classifier.save_to_preset(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = pk.PerceiverClassifier.from_preset(str(tmp_path))
    messages = [str(w.message) for w in caught
                if issubclass(w.category, UserWarning)]
    assert not messages, messages
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x)),
        keras.ops.convert_to_numpy(classifier(x)), atol=1e-6,
    )
    # The restored task trains (its optimizer starts fresh).
    restored.fit(x, np.arange(8) % 2, epochs=1, batch_size=4, verbose=0)


def test_compile_config_is_restored_silently():
    classifier, _ = tiny_trained_classifier()
    classifier.compile(optimizer=keras.optimizers.SGD(0.25), loss="mse")
    config = keras.saving.serialize_keras_object(classifier)
    assert config.get("compile_config")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.saving.deserialize_keras_object(config)
    assert not [w for w in caught if "compile()" in str(w.message)]
    assert isinstance(restored.optimizer, keras.optimizers.SGD)
    assert float(restored.optimizer.learning_rate) == 0.25
