import keras
import numpy as np
import pytest

from conftest import to_numpy
from perceiver_keras import PerceiverArrayAdapter
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverIO
from perceiver_keras.models.perceiver_task import _ArrayBatches


def point_sets(n, seed):
    """Sets of 12 2-D points; label: is the mean first coordinate > 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 2)).astype("float32")
    x[:, :, 0] += rng.choice([-0.7, 0.7], size=(n, 1))
    y = (x[:, :, 0].mean(1) > 0).astype("int32")
    return x, y


def make_classifier(pooling="query", dropout=0.0):
    backbone = PerceiverBackbone(
        inputs_shape=(12, 2),
        # Projected: a LayerNorm over 2 raw channels keeps only their sign
        # pattern, and the label needs the magnitudes.
        input_adapter=PerceiverArrayAdapter(
            position_encoding=None, input_projection_dim=16
        ),
        num_latents=8, latent_dim=32, num_blocks=2,
        num_self_attends_per_block=1, num_self_attend_heads=4,
        dropout=dropout,
    )
    return PerceiverClassifier(backbone, num_classes=2, pooling=pooling)


class PointSetBatches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size=32):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def data_in(form, x, y):
    if form == "numpy":
        return dict(x=x, y=y, batch_size=32)
    if form == "pydataset":
        return dict(x=PointSetBatches(x, y))
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dict(x=dataset.shuffle(len(x), seed=0).batch(32))


def test_fit_learns_and_beats_chance_on_held_out():
    x, y = point_sets(384, seed=0)
    x_test, y_test = point_sets(256, seed=1)
    classifier = make_classifier()
    before = classifier.evaluate(x_test, y_test, verbose=0)[0]
    history = classifier.fit(x, y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < min(losses[0], 0.6 * before)
    loss, accuracy = classifier.evaluate(x_test, y_test, verbose=0)
    assert loss < before
    assert accuracy > 0.8  # chance is 0.5
    predictions = classifier.predict(x_test, verbose=0).argmax(-1)
    assert (predictions == y_test).mean() == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("form", ["pydataset", "tf.data"])
def test_fit_and_evaluate_on_datasets(form):
    x, y = point_sets(192, seed=0)
    classifier = make_classifier()
    before = classifier.evaluate(**data_in("numpy", x, y), verbose=0)[0]
    classifier.fit(**data_in(form, x, y), epochs=2, verbose=0)
    after = classifier.evaluate(**data_in(form, x, y), verbose=0)[0]
    assert after < 0.9 * before


def test_validation_data_and_mean_pooling():
    x, y = point_sets(256, seed=2)
    classifier = make_classifier(pooling="mean")
    history = classifier.fit(x, y, validation_data=(x[:64], y[:64]),
                             epochs=2, verbose=0)
    assert "val_loss" in history.history


def test_numpy_batches_are_reshuffled_every_epoch():
    x = np.arange(100, dtype="float32")[:, None]
    batches = _ArrayBatches((x, x[:, 0], None), 10, True, lambda b: b)
    first = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
    batches.on_epoch_end()
    second = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
    assert sorted(first) == sorted(second) == list(range(100))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(100))
    fixed = _ArrayBatches((x, None, None), 10, False, lambda b: b)
    np.testing.assert_array_equal(fixed[0][0][:, 0], np.arange(10))


def test_gradients_reach_every_trainable_weight():
    x, y = point_sets(64, seed=3)
    classifier = make_classifier()
    classifier.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [to_numpy(w).copy() for w in classifier.trainable_weights]
    classifier.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    unchanged = [
        w.path for w, b in zip(classifier.trainable_weights, before)
        if np.array_equal(to_numpy(w), b)
    ]
    assert not unchanged, unchanged
    assert len(before) > 30


def test_trained_task_round_trips_through_preset_and_keras_file(tmp_path):
    x, y = point_sets(128, seed=4)
    classifier = make_classifier(dropout=0.1)
    classifier.fit(x, y, epochs=1, verbose=0)
    expected = classifier.predict(x, verbose=0)
    classifier.save_to_preset(str(tmp_path / "preset"))
    restored = PerceiverClassifier.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)
    classifier.save(str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert isinstance(loaded, PerceiverClassifier)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_perceiver_io_per_element_regression():
    """Predict each point's distance to the set's centroid."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 12, 2)).astype("float32")
    target = np.linalg.norm(x - x.mean(1, keepdims=True), axis=-1)[..., None]
    backbone = PerceiverBackbone(
        inputs_shape=(12, 2),
        input_adapter=PerceiverArrayAdapter(num_bands=4),
        num_latents=16, latent_dim=32, num_self_attends_per_block=1,
        num_self_attend_heads=4,
    )
    model = PerceiverIO(backbone, output_index_dims=(12,), output_channels=1,
                        query_encoding="fourier", num_bands=4)
    first = model.evaluate(x, target, verbose=0)[0]
    model.fit(x, target, epochs=8, batch_size=32, verbose=0)
    last = model.evaluate(x, target, verbose=0)[0]
    assert model.predict(x[:3], verbose=0).shape == (3, 12, 1)
    assert last < 0.6 * first
    config = model.get_config()
    assert PerceiverIO.from_config(config).count_params() == model.count_params()


def test_task_input_errors_name_the_argument():
    classifier = make_classifier()
    with pytest.raises(ValueError, match=r"must have shape \(batch, 12, 2\)"):
        classifier.predict(np.zeros((4, 12, 3), "float32"), verbose=0)
    with pytest.raises(ValueError, match="must hold float data"):
        classifier.predict(np.zeros((4, 12, 2), "int64"), verbose=0)


def test_image_classifier_with_preprocessor_fit_predict_and_preset(tmp_path):
    from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
        PerceiverImageClassifier,
    )
    from perceiver_keras.models.perceiver_io.perceiver_image_classifier_preprocessor import (
        PerceiverImageClassifierPreprocessor,
    )
    from perceiver_keras.models.perceiver_io.perceiver_image_converter import (
        PerceiverImageConverter,
    )
    from perceiver_keras import PerceiverImageAdapter

    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(40, 20, 24, 3)).astype("uint8")
    labels = (images[..., 0].mean((1, 2)) > 127).astype("int32")
    backbone = PerceiverBackbone(
        (16, 16, 3), PerceiverImageAdapter("pixels", num_bands=4),
        num_latents=4, latent_dim=16, num_self_attends_per_block=1,
        num_self_attend_heads=2,
    )
    preprocessor = PerceiverImageClassifierPreprocessor(
        PerceiverImageConverter(image_size=(16, 16))
    )
    classifier = PerceiverImageClassifier(backbone, 2,
                                          preprocessor=preprocessor)
    classifier.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    predicted = classifier.predict(images[:5], verbose=0)
    # The same as preprocessing by hand and running the bare model.
    pixels = to_numpy(preprocessor(images[:5])["inputs"])
    assert pixels.shape == (5, 16, 16, 3)
    classifier.preprocessor = None
    np.testing.assert_allclose(classifier.predict(pixels, verbose=0),
                               predicted, atol=1e-5)
    classifier.preprocessor = preprocessor
    classifier.save_to_preset(str(tmp_path))
    restored = PerceiverImageClassifier.from_preset(str(tmp_path))
    assert isinstance(restored.preprocessor,
                      PerceiverImageClassifierPreprocessor)
    np.testing.assert_allclose(restored.predict(images[:5], verbose=0),
                               predicted, atol=1e-6)
