"""The Keras side: the same checkpoints loaded with the project's
transformers loader, run with `predict_on_batch` / `train_on_batch` / `fit`
on the backend KERAS_BACKEND names. Every timed row counts how often the
model's Python `call` ran: on JAX and TensorFlow a timed call must not run
it (RetraceError otherwise: eager execution or a re-trace per call)."""

import json
import os
import statistics
import time

from throughput.measure import ProgressRows
from throughput.measure import agreement
from throughput.measure import allowed_runs
from throughput.measure import check_runs
from throughput.measure import configure_torch
from throughput.measure import count_runs
from throughput.measure import low_precision_agreement
from throughput.measure import read_status
from throughput.measure import reference_path
from throughput.measure import reset_peak_rss
from throughput.measure import run_workloads
from throughput.measure import time_calls
from throughput.workloads import KERAS_BACKENDS
from throughput.workloads import array_batch
from throughput.workloads import keras_dtype
from throughput.workloads import keras_inputs
from throughput.workloads import labels_batch


def configure_keras(threads):
    """Imports Keras on the backend KERAS_BACKEND names, with `threads`."""
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if backend == "torch":
        configure_torch(threads)
    import keras

    return keras


def execution_of(model, keras):
    """How `predict_on_batch` / `train_on_batch` run on this backend."""
    backend = keras.backend.backend()
    if backend == "torch":
        return "eager"
    jit = model.jit_compile
    if backend == "jax":
        return "jax.jit (XLA)" if jit else "eager"
    return "tf.function + XLA" if jit else "tf.function (no XLA)"


def unbuilt_layers(model):
    """Tracked layers that were never built. Keras' JAX `predict_on_batch`
    runs the model eagerly before its compiled call while any exists, and
    `train_on_batch` re-traces it symbolically every step (all backends)."""
    return [layer.name for layer in model._flatten_layers()
            if not layer.built]


def load_keras_model(spec, directory, dtype=None):
    from perceiver_keras import PerceiverBackbone
    from perceiver_keras import PerceiverTask

    start = time.perf_counter()
    kwargs = {} if dtype is None else {"dtype": dtype}
    if spec["architecture"] == "PerceiverModel":
        model = PerceiverBackbone.from_preset(directory, **kwargs)
    else:
        model = PerceiverTask.from_preset(directory, **kwargs)
        # keras-hub tasks run their preprocessor (image crop and resize,
        # tokenizer) inside predict_on_batch / train_on_batch; the inputs
        # here are already model inputs, as transformers' are.
        model.preprocessor = None
    return model, time.perf_counter() - start


def backbone_of(model):
    """The layer whose runs are counted: the backbone (of a task)."""
    return getattr(model, "backbone", model)


def checked(row, backend, what):
    """Records the run counts' verdict in `row`; raises RetraceError (the
    workload fails loudly) when a timed call ran the model."""
    row["allowed_runs"] = allowed_runs(backend, len(row["times_s"]))
    check_runs(backend, row["timed_runs"], len(row["times_s"]), what)
    return row


def timed_row(keras, model, record, batch, dtype, policy, load_s, base_rss,
              **measured):
    """A row of `time_calls`' `record`: what ran (batch, dtype, policy,
    execution), `measured` and the peak memory since `base_rss`."""
    return dict(record, batch=batch, dtype=dtype,
                policy=policy or "float32", load_s=load_s, **measured,
                peak_rss=read_status("VmHWM"), base_rss=base_rss,
                execution=execution_of(model, keras),
                unbuilt_layers=unbuilt_layers(model))


def add_row(rows, job, backend, row, result, expected):
    """Appends `row`, with `result`'s agreement with transformers'
    `expected` float32 result where there is one, and its run counts
    checked."""
    if expected is not None:
        compare = (agreement if row["dtype"] == "float32"
                   else low_precision_agreement)
        row.update(compare(result, expected), reference="transformers float32")
    rows.append(checked(
        row, backend, f"{job['workload']} batch {row['batch']} {row['dtype']}"
    ))


def rows_per_dtype(job, spec, keras, measure):
    """The rows `measure(rows, model, dtype, policy, load_s)` appends for
    each dtype of the workload, the model loaded under that dtype's policy
    and released (session cleared) before the next is loaded."""
    rows = ProgressRows(job)
    for dtype in spec.get("dtypes", ["float32"]):
        policy = keras_dtype(spec, dtype)
        model, load_s = load_keras_model(spec, job["checkpoint"], policy)
        measure(rows, model, dtype, policy, load_s)
        model = None
        keras.backend.clear_session()
    return rows


def keras_inference(job, spec, keras):
    import numpy as np

    backend = keras.backend.backend()

    def measure(rows, model, dtype, policy, load_s):
        for batch in spec["batches"]:
            x = keras_inputs(spec, batch)
            base_rss = reset_peak_rss()
            logits, record = time_calls(
                lambda: model.predict_on_batch(x), job["repeats"],
                job["budget_s"], model=backbone_of(model))
            row = timed_row(keras, model, record, batch, dtype, policy,
                            load_s, base_rss)
            path = reference_path(job, batch)
            expected = np.load(path) if os.path.exists(path) else None
            add_row(rows, job, backend, row, logits, expected)

    return rows_per_dtype(job, spec, keras, measure)


def keras_training(job, spec, keras):
    backend = keras.backend.backend()

    def measure(rows, model, dtype, policy, load_s):
        model.compile(
            optimizer=keras.optimizers.Adam(spec["learning_rate"],
                                            epsilon=1e-8),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=None,
        )
        for batch in spec["batches"]:
            images = keras_inputs(spec, batch)
            labels = labels_batch(batch, spec["config"]["num_labels"])
            losses = []

            def step():
                logs = model.train_on_batch(images, labels, return_dict=True)
                losses.append(float(logs["loss"]))
                return losses[-1]

            base_rss = reset_peak_rss()
            first_loss, record = time_calls(step, job["repeats"],
                                            job["budget_s"],
                                            model=backbone_of(model))
            row = timed_row(keras, model, record, batch, dtype, policy,
                            load_s, base_rss, first_loss=first_loss,
                            last_loss=losses[-1], steps=len(losses))
            path = reference_path(job, batch, ".json")
            expected = None
            if os.path.exists(path):
                with open(path) as f:
                    expected = json.load(f)["first_loss"]
            add_row(rows, job, backend, row, first_loss, expected)

    return rows_per_dtype(job, spec, keras, measure)


def scaling_reference(job, size):
    """transformers' output at this size, else an earlier Keras backend's
    (for the sizes transformers could not run)."""
    import numpy as np

    path = reference_path(job, size)
    if os.path.exists(path):
        return np.load(path), "transformers"
    for backend in KERAS_BACKENDS:
        path = reference_path(job, f"{size}-{backend}")
        if backend != job["backend"] and os.path.exists(path):
            return np.load(path), f"keras {backend}"
    return None, None


def keras_scaling(job, spec, keras):
    """Sizes in increasing order in one process; VmHWM is reset before each
    size, so its peak is that size's."""
    import numpy as np

    model, load_s = load_keras_model(spec, job["checkpoint"])
    attention = model.cross_attends[0].attention
    latents = spec["config"]["num_latents"]
    rows = ProgressRows(job)
    for size in spec["sizes"]:
        x = array_batch(size, spec["config"]["d_model"])
        base_rss = reset_peak_rss()
        hidden, record = time_calls(lambda: model.predict_on_batch(x),
                                    job["repeats"], job["budget_s"],
                                    model=model)
        row = dict(record, size=size, load_s=load_s,
                   peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   path=attention.implementation_for(latents, size),
                   execution=execution_of(model, keras))
        np.save(reference_path(job, f"{size}-{job['backend']}"), hidden)
        expected, reference = scaling_reference(job, size)
        if expected is not None:
            row.update(agreement(hidden, expected), reference=reference)
        rows.append(checked(row, keras.backend.backend(),
                            f"{job['workload']} M={size:,}"))
        x = hidden = None  # free this size's arrays before the next
    return rows


# --- small-model fit (ours only) ---------------------------------------------

# One example of each recommended_config kind (its default input sizes).
FIT_SHAPES = {
    "image": (32, 32, 3),
    "sequence": (256, 1),
    "point_set": (256, 3),
    "text": (512,),
}
FIT_CLASSES = 10


def fit_data(kind, count, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (count,) + FIT_SHAPES[kind]
    if kind == "text":
        x = rng.integers(0, 262, shape).astype("int32")
    else:
        x = rng.normal(size=shape).astype("float32")
    return x, rng.integers(0, FIT_CLASSES, count)


def step_intervals(start, ends):
    """Seconds of each step from the fit's start and the steps' end times."""
    times = [start] + list(ends)
    return [b - a for a, b in zip(times, times[1:])]


def fit_model(keras, kind, dtype=None, seed=0):
    """`(backbone, classifier)`: the fit-steps model, a `PerceiverClassifier`
    on `recommended_config(kind)`, default `compile()`."""
    from perceiver_keras import PerceiverBackbone
    from perceiver_keras import PerceiverClassifier
    from perceiver_keras import recommended_config

    keras.utils.set_random_seed(seed)
    overrides = {} if dtype is None else {"dtype": dtype}
    backbone = PerceiverBackbone(
        **recommended_config(kind, FIT_SHAPES[kind], **overrides))
    model = PerceiverClassifier(backbone, FIT_CLASSES, **overrides)
    model.compile()
    return backbone, model


def measure_fit(keras, kind, steps, batch_size, dtype=None, seed=0):
    """One epoch of `fit` of `steps` batches of `fit_model(kind)`. Returns a
    row; raises RetraceError if a step after the first ran the backbone's
    `call` on JAX/TensorFlow."""
    backend = keras.backend.backend()
    backbone, model = fit_model(keras, kind, dtype, seed)
    x, y = fit_data(kind, steps * batch_size, seed)
    ends, runs_at = [], []

    with count_runs(backbone) as counter:
        class Times(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ends.append(time.perf_counter())
                runs_at.append(counter.runs)

        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch_size, epochs=1,
                            verbose=0, callbacks=[Times()])
    intervals = step_intervals(start, ends)
    row = dict(
        kind=kind, backend=backend, dtype=dtype or "float32",
        batch=batch_size, steps=len(intervals), first_s=intervals[0],
        times_s=intervals[1:], median_s=statistics.median(intervals[1:]),
        traces=runs_at[0], timed_runs=runs_at[-1] - runs_at[0],
        params=model.count_params(),
        final_loss=float(history.history["loss"][-1]),
        load=os.getloadavg()[0],
    )
    return checked(row, backend, f"fit {kind} {row['dtype']}")


def keras_fit_steps(job, spec, keras):
    rows = ProgressRows(job)
    for dtype in spec["dtypes"]:
        for kind in spec["kinds"]:
            row = measure_fit(keras, kind, spec["steps"], spec["batch_size"],
                              None if dtype == "float32" else dtype)
            rows.append(dict(row, fit=f"{kind} {row['dtype']}"))
            keras.backend.clear_session()
    return rows


def keras_child(job):
    keras = configure_keras(job["threads"])
    runners = {"inference": keras_inference, "training": keras_training,
               "scaling": keras_scaling, "fit": keras_fit_steps}

    def run(workload_job, spec):
        try:
            return runners[spec["kind"]](workload_job, spec, keras)
        finally:
            keras.backend.clear_session()  # free the model's graphs

    run_workloads(job, run)


