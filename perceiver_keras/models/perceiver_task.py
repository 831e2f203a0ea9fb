"""What every Perceiver task shares: input checks and data handling.

keras-hub's `Task.fit` turns NumPy arrays into an unshuffled pipeline and
does not accept `keras.utils.PyDataset`. Here NumPy arrays are shuffled each
epoch (`shuffle=True`, as in `keras.Model.fit`) and a `PyDataset` works; a
preprocessor, when set, runs on each batch. `tf.data` datasets keep going
through keras-hub's pipeline, which maps the preprocessor over them.
"""

import contextlib
import gc

import keras
import numpy as np
from keras_hub.models import Task

from perceiver_keras.layers.decoders import PerceiverQueryDecoder
from perceiver_keras.layers.utils import ConfigArgumentsMixin
from perceiver_keras.models import presets
from perceiver_keras.models.export import ExportMixin
from perceiver_keras.models.input_validation import ValidatedInputsMixin
from perceiver_keras.models.input_validation import is_array_data
from perceiver_keras.models.input_validation import validate_backbone_inputs


def _lists_to_arrays(x):
    """A flat list of strings or numbers (texts, labels) as a NumPy array.

    Lets `fit(["some text", ...], [0, ...])` take the shuffled NumPy path.
    """
    scalars = (str, bytes, int, float, bool, np.generic)
    if isinstance(x, list) and x and all(isinstance(v, scalars) for v in x):
        return np.asarray(x)
    return x


def _to_numpy(structure):
    return keras.tree.map_structure(
        lambda t: None if t is None else keras.ops.convert_to_numpy(t),
        structure,
    )


class _ArrayBatches(keras.utils.PyDataset):
    """Batches of NumPy `(x, y, sample_weight)`, reshuffled every epoch."""

    def __init__(self, data, batch_size, shuffle, preprocess):
        super().__init__()
        self.data = _to_numpy(data)
        self.size = len(keras.tree.flatten(self.data)[0])
        self.batch_size = batch_size or 32
        self.shuffle = shuffle
        self.preprocess = preprocess
        self.order = np.arange(self.size)
        self.on_epoch_end()

    def __len__(self):
        return -(-self.size // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        batch = keras.tree.map_structure(
            lambda a: None if a is None else a[rows], self.data
        )
        if isinstance(batch, tuple):
            batch = tuple(part for part in batch if part is not None)
        return self.preprocess(batch)

    def on_epoch_end(self):
        if self.shuffle:
            np.random.shuffle(self.order)


class _PreprocessedBatches(keras.utils.PyDataset):
    """A user's `PyDataset` with the task's preprocessor applied per batch."""

    def __init__(self, dataset, preprocess):
        super().__init__()
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return self.preprocess(self.dataset[index])

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


# The query decoder's cross-attention options, taken by every task with a
# query decoder as `decoder_<option>` constructor arguments.
DECODER_ATTENTION_OPTIONS = (
    "num_heads", "qk_channels", "v_channels", "use_query_residual",
)


def query_decoder(backbone, arguments, cls=PerceiverQueryDecoder, **options):
    """A task's decoder: `cls` with the `decoder_*` attention options found
    in `arguments` (the task constructor's `locals()`), the backbone's GELU
    variant and dtype policy, and `options`."""
    attention = {
        option: arguments[f"decoder_{option}"]
        for option in DECODER_ATTENTION_OPTIONS
    }
    return cls(
        **attention,
        **options,
        gelu_approximate=backbone.gelu_approximate,
        dtype=backbone.dtype_policy,
        name="decoder",
    )


@contextlib.contextmanager
def _one_garbage_collection():
    """Keras' `Layer.__delattr__` runs `gc.collect()` for every variable it
    deletes, as `quantize` does with each Dense kernel: 0.6 s a layer in a
    process holding many objects (a 30-Dense masked LM took 18 s to
    quantize, 0.5 s with this). One collection at the end frees the same."""
    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        collect()


class PerceiverTask(ConfigArgumentsMixin, ExportMixin, ValidatedInputsMixin,
                    Task):
    """Base of the Perceiver tasks (not used directly).

    A task declares, instead of re-typing them:
    - `config_arguments`: its constructor arguments besides `backbone` and
      `preprocessor`; the constructor ends with `self._store_config(locals())`
      and `get_config` returns them (layers and activations serialized);
    - its `compile()` defaults: `default_learning_rate` (Adam),
      `default_loss()`, `default_metrics()` and `default_weighted_metrics()`.
    """

    config_arguments = ()
    default_learning_rate = 1e-3

    def default_loss(self):
        return None

    def default_metrics(self):
        return None

    def default_weighted_metrics(self):
        return None

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto",
                weighted_metrics="auto", **kwargs):
        """keras' `compile`; "auto" takes the task's defaults (Adam at
        `default_learning_rate`, `default_loss()`, `default_metrics()`,
        `default_weighted_metrics()`)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(self.default_learning_rate)
        if loss == "auto":
            loss = self.default_loss()
        if metrics == "auto":
            metrics = self.default_metrics()
        if weighted_metrics == "auto":
            weighted_metrics = self.default_weighted_metrics()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        weighted_metrics=weighted_metrics, **kwargs)

    def __setattr__(self, name, value):
        # Keras' `Layer.__setattr__` tracks the assigned value before the
        # property setter runs, so on TF/JAX (keras-hub skips it on torch
        # only) `task.preprocessor = p` on a built task hits the tracker
        # lock before our setter can unlock it. Go straight to the setter.
        if name == "preprocessor":
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

    @property
    def preprocessor(self):
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        # keras-hub's setter keeps a replaced preprocessor tracked: its
        # never-called layers stay unbuilt, and Keras' trainers then
        # rebuild the model on every train_on_batch (and JAX runs it
        # eagerly before each predict_on_batch).
        previous = self.preprocessor
        if previous is not None and previous is not value:
            self._tracker.untrack(previous)
        # Putting a preprocessor back on a built task adds no model state.
        tracker = self.__dict__.get("_tracker")  # absent before Model init
        locked = tracker is not None and tracker.locked
        if locked:
            tracker.unlock()
        try:
            self._preprocessor = value
        finally:
            if locked:
                tracker.lock()

    def make_train_function(self, force=False):
        # Keras' TensorFlow trainer, without a distribution strategy, builds
        # the optimizer inside the first traced train step, and
        # `tf.function` traces a function that creates variables twice.
        # Built here first, the step is traced once (the recommended `text`
        # classifier's first `fit` step: 13.6 s -> 9.7 s on 2 cores).
        if (keras.config.backend() == "tensorflow"
                and self.optimizer is not None and not self.optimizer.built
                and getattr(self, "_distribute_strategy", None) is None
                and self._model_layers_built()):
            self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force)

    def _model_layers_built(self):
        """Every layer built, the preprocessor's aside (keras-hub's
        tokenizers and packers stay unbuilt and hold no weights)."""
        preprocessing = set()
        if self.preprocessor is not None:
            preprocessing = {id(layer) for layer in
                             self.preprocessor._flatten_layers()}
        return all(layer.built for layer in self._flatten_layers()
                   if id(layer) not in preprocessing)

    def quantize(self, mode, **kwargs):
        # keras-hub's preprocessing layers hold no weights but stay unbuilt
        # until called, and Keras refuses to quantize a model with an
        # unbuilt layer (TensorFlow, JAX: the preprocessor never ran).
        if self.preprocessor is not None:
            for layer in self.preprocessor._flatten_layers():
                if not layer.weights:
                    layer.built = True
        with _one_garbage_collection():
            super().quantize(mode, **kwargs)

    def validate_inputs(self, inputs):
        return validate_backbone_inputs(self.backbone, inputs)

    def validate_data(self, x):
        # With a preprocessor, raw data is not yet model input.
        if self.preprocessor is None:
            super().validate_data(x)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus DeepMind's six built-in names.

        See `perceiver_keras.models.presets` for how a built-in
        name resolves (local converted copy, offline build, or a ValueError
        that says how to convert the checkpoint).
        """

        def load(path):  # keras-hub's path, on the class the preset records
            task_cls = presets.saved_task_class(cls, path)
            return super(PerceiverTask, task_cls).from_preset(
                path, load_weights=load_weights, **kwargs
            )

        return presets.from_preset(
            cls, preset, load_weights, kwargs, load
        )

    # Presets hold weights, not training state: the optimizer is neither
    # saved nor loaded (older presets that hold one load without warnings).
    def _weights_to_skip(self):
        skip = list(self.backbone._flatten_layers())
        if getattr(self, "optimizer", None) is not None:
            skip.append(self.optimizer)
        return skip

    def save_task_weights(self, filepath):
        if not self.has_task_weights():
            return super().save_task_weights(filepath)  # its error
        keras.saving.save_weights(self, filepath,
                                  objects_to_skip=self._weights_to_skip())

    def load_task_weights(self, filepath):
        keras.saving.load_weights(self, filepath,
                                  objects_to_skip=self._weights_to_skip())

    def compile_from_config(self, config):
        """Compiles with the saved settings. Keras' own version only warns
        for tasks, whose `compile()` (defaults) is customised."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _preprocess_batch(self, batch):
        if self.preprocessor is None:
            return batch
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        return _to_numpy(self.preprocess_samples(x, y, sample_weight))

    def _as_batches(self, x, y, sample_weight, batch_size, shuffle):
        """A `PyDataset` for NumPy data or a user's PyDataset, else None."""
        if isinstance(x, keras.utils.PyDataset):
            if self.preprocessor is None:
                return x
            return _PreprocessedBatches(x, self._preprocess_batch)
        x, y, sample_weight = map(_lists_to_arrays, (x, y, sample_weight))
        if is_array_data(x):
            self.validate_data(x)
            data = (x, y, sample_weight)
            return _ArrayBatches(
                data, batch_size, shuffle, self._preprocess_batch
            )
        return None

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        sample_weight=None,
        validation_data=None,
        shuffle=True,
        validation_split=0.0,
        **kwargs,
    ):
        if validation_split:
            x, y, sample_weight, validation_data = self._split_validation(
                x, y, sample_weight, validation_split, validation_data
            )
        batches = self._as_batches(x, y, sample_weight, batch_size, shuffle)
        if batches is None:
            # A dataset is shuffled by its own pipeline, not by Keras.
            return super().fit(
                x, y, batch_size=batch_size, sample_weight=sample_weight,
                validation_data=validation_data, shuffle=False, **kwargs,
            )
        if validation_data is not None and not isinstance(
            validation_data, keras.utils.PyDataset
        ):
            vx, vy, vsw = keras.utils.unpack_x_y_sample_weight(validation_data)
            validation_data = self._as_batches(vx, vy, vsw, batch_size, False)
        elif validation_data is not None:
            validation_data = self._as_batches(
                validation_data, None, None, None, False
            )
        # Arrays are shuffled (or not) by `_ArrayBatches` itself; Keras
        # would shuffle its batch order again, even with `shuffle=False`.
        user_dataset = isinstance(x, keras.utils.PyDataset)
        return keras.Model.fit(
            self, batches, validation_data=validation_data,
            shuffle=shuffle if user_dataset else False, **kwargs
        )

    def _split_validation(self, x, y, sample_weight, validation_split,
                          validation_data):
        """As `keras.Model.fit`: the last `validation_split` of the arrays,
        taken before any shuffling, is held out (ignored when
        `validation_data` is given)."""
        if not 0.0 < validation_split < 1.0:
            raise ValueError(
                "`validation_split` must be a float in (0, 1). Received: "
                f"validation_split={validation_split!r}."
            )
        x, y, sample_weight = map(_lists_to_arrays, (x, y, sample_weight))
        if not is_array_data(x):
            raise ValueError(
                "`validation_split` is only supported for NumPy arrays or "
                "tensors; pass `validation_data` with datasets. Received: "
                f"x of type {type(x).__name__}."
            )
        if validation_data is not None:
            return x, y, sample_weight, validation_data
        data = _to_numpy((x, y, sample_weight))
        size = len(keras.tree.flatten(data)[0])
        split_at = int(np.floor(size * (1.0 - validation_split)))
        if split_at in (0, size):
            raise ValueError(
                f"`validation_split`={validation_split} leaves an empty "
                f"training or validation set for {size} samples."
            )
        train, held_out = (
            keras.tree.map_structure(
                lambda a: None if a is None else a[part], data
            )
            for part in (slice(None, split_at), slice(split_at, None))
        )
        held_out = tuple(part for part in held_out if part is not None)
        return (*train, held_out)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None,
                 **kwargs):
        batches = self._as_batches(x, y, sample_weight, batch_size, False)
        if batches is None:
            return super().evaluate(
                x, y, batch_size=batch_size, sample_weight=sample_weight,
                **kwargs,
            )
        return keras.Model.evaluate(self, batches, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        batches = self._as_batches(x, None, None, batch_size, False)
        if batches is None:
            return super().predict(x, batch_size=batch_size, **kwargs)
        return keras.Model.predict(self, batches, **kwargs)
