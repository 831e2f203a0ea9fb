"""transformers' PyTorch Perceiver vs perceiver_keras on torch, JAX, TensorFlow.

    python benchmarks/compare_transformers.py            # ~20 min on 2 cores
    python benchmarks/compare_transformers.py --quick    # tiny sizes, ~3 min
    python benchmarks/compare_transformers.py --workloads language-mlm \
        --frameworks transformers jax --repeats 5 --no-write

Same weights, same inputs, one machine, one run. Each transformers model
is built with seeded random weights and written with `save_pretrained`;
the Keras side loads that directory with `PerceiverTask.from_preset` (or
`PerceiverBackbone.from_preset` for a bare `PerceiverModel`), the project's
transformers loader. Before a time counts, the Keras outputs are compared
with transformers' (max|diff| <= 2e-5 * max(1, max|ref|)); the verdict is a
column of every table.

Workloads (WORKLOADS below; `--quick` shrinks every size):

- vision-fourier: `PerceiverForImageClassificationFourier` as
  deepmind/vision-perceiver-fourier (224x224 pixels + Fourier features =
  50,176 inputs of 261 channels, 512 latents x 1024, 8 blocks x 6
  self-attention layers, 1000 classes), inference at batch 1 and 4.
- language-mlm: `PerceiverForMaskedLM` with `PerceiverConfig()`'s defaults
  (2048 bytes, d_model 768, 256 latents x 1280, 26 self-attention layers),
  inference at batch 1.
- image-training: one training step (forward, backward, Adam update,
  cross-entropy) of a mid-size `PerceiverForImageClassificationLearned`
  (64x64 images, 256 latents x 512), batch 8.
- encoder-scaling: a bare `PerceiverModel` (inputs `[1, M, 64]`, 512
  latents x 1024, 8 cross-attention heads, one self-attention layer) for
  M = 1k .. 1M: forward time and peak resident memory.

Each framework runs in its own child process (KERAS_BACKEND is fixed per
process; transformers gets one too), with the same thread count. Times are
medians of timed runs after one warm-up call (the warm-up, which includes
tracing and compilation, is reported separately). Throughput ratios are
transformers' median time / ours, from the same run. GFLOP/s use the
analytic FLOP count of `forward_flops` (checked against torch's FLOP
formulas on the products transformers' warm-up call dispatches) and are
compared with the machine's float32 matmul rate, measured at the start.
See benchmarks/README.md.
"""

import argparse
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
RESULT_NAME = "compare_transformers"
MIB = 2**20
GIB = 2**30

FRAMEWORKS = ("transformers", "torch", "jax", "tensorflow")
KERAS_BACKENDS = ("torch", "jax", "tensorflow")
TOLERANCE = 2e-5  # max|diff| <= TOLERANCE * max(1, max|ref|)
SEED = 0

# transformers' PerceiverForImageClassificationFourier input width: RGB +
# 2-D Fourier features (64 bands, sine and cosine) + the 2 raw positions.
FOURIER_CHANNELS = 3 + 2 * 2 * 64 + 2
# PerceiverForImageClassificationLearned: 256 conv channels + 256 positions.
LEARNED_CHANNELS = 256 + 256
# transformers' PerceiverForMaskedLM decoder query/key width (fixed in its
# constructor: 8 heads x 32).
MLM_DECODER_QK = 8 * 32

WORKLOADS = {
    "vision-fourier": dict(
        kind="inference",
        architecture="PerceiverForImageClassificationFourier",
        config=dict(
            d_model=FOURIER_CHANNELS, num_latents=512, d_latents=1024,
            num_blocks=8, num_self_attends_per_block=6,
            num_self_attention_heads=8, num_cross_attention_heads=1,
            num_labels=1000,
        ),
        image_size=224, batches=[1, 4],
    ),
    "language-mlm": dict(
        kind="inference",
        architecture="PerceiverForMaskedLM",
        config={},  # PerceiverConfig's defaults are language-perceiver's
        batches=[1],
    ),
    "image-training": dict(
        kind="training",
        architecture="PerceiverForImageClassificationLearned",
        config=dict(
            image_size=64, d_model=LEARNED_CHANNELS, num_latents=256,
            d_latents=512, num_blocks=1, num_self_attends_per_block=4,
            num_self_attention_heads=8, num_cross_attention_heads=1,
            num_labels=100,
            # No dropout: both sides then compute the same first-step loss.
            attention_probs_dropout_prob=0.0,
        ),
        batches=[8], learning_rate=1e-4,
    ),
    "encoder-scaling": dict(
        kind="scaling",
        architecture="PerceiverModel",
        config=dict(
            d_model=64, num_latents=512, d_latents=1024, num_blocks=1,
            num_self_attends_per_block=1, num_self_attention_heads=8,
            num_cross_attention_heads=8,
        ),
        sizes=[1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000],
    ),
}

# --quick: the same four workloads, small enough for a ~3 minute smoke
# test. The scaling sizes still cross the plain -> chunked switch ("auto"
# streams once heads x latents x M > 2**25: M > 65,536 with 64 latents).
QUICK = {
    "vision-fourier": dict(
        config=dict(num_latents=64, d_latents=128, num_blocks=2,
                    num_self_attends_per_block=2, num_labels=10),
        image_size=32,
    ),
    "language-mlm": dict(
        config=dict(max_position_embeddings=256, d_model=64, num_latents=32,
                    d_latents=128, num_self_attends_per_block=2),
    ),
    "image-training": dict(
        config=dict(image_size=16, num_latents=32, d_latents=64,
                    num_self_attends_per_block=2, num_labels=10),
    ),
    "encoder-scaling": dict(
        config=dict(num_latents=64, d_latents=128),
        sizes=[1_000, 16_000, 128_000],
    ),
}


def workload_specs(quick):
    """{name: spec}; with `quick`, QUICK's overrides applied."""
    specs = {}
    for name, spec in WORKLOADS.items():
        spec = dict(spec, config=dict(spec["config"]))
        if quick:
            overrides = QUICK[name]
            spec.update({k: v for k, v in overrides.items() if k != "config"})
            spec["config"].update(overrides.get("config", {}))
        specs[name] = spec
    return specs


# --- FLOPs --------------------------------------------------------------------
#
# Multiply-adds of matrix products only, counted as 2*m*n*k: projections,
# Q K^T, softmax(Q K^T) V, MLPs, the decoder and the output layer.
# LayerNorm, softmax, GELU, Fourier features and embeddings lookups are not
# counted. transformers' defaults fill the unset config fields.

CONFIG_DEFAULTS = dict(
    num_latents=256, d_latents=1280, d_model=768, num_blocks=1,
    num_self_attends_per_block=26, qk_channels=None, v_channels=None,
    cross_attention_widening_factor=1, self_attention_widening_factor=1,
    cross_attention_shape_for_attention="kv", vocab_size=262,
    max_position_embeddings=2048, image_size=56, num_labels=2,
)


def attention_layer_flops(num_queries, num_keys, q_dim, kv_dim, qk, v, out,
                          widening):
    """One transformers `PerceiverLayer`: attention, then its MLP on the
    query-width residual stream (`out` is the attention's output width,
    equal to `q_dim` in every layer here)."""
    projections = (2 * num_queries * q_dim * qk           # Q
                   + 2 * num_keys * kv_dim * (qk + v)     # K, V
                   + 2 * num_queries * v * out)           # output
    scores = 2 * num_queries * num_keys * qk              # Q K^T
    mix = 2 * num_queries * num_keys * v                  # softmax(.) V
    mlp = 2 * 2 * num_queries * q_dim * (widening * q_dim)  # two Linears
    return projections + scores + mix + mlp


def encoder_flops(config, num_inputs, input_channels):
    """Latents cross-attend to `num_inputs` x `input_channels`, then the
    self-attention stack (num_blocks x num_self_attends_per_block)."""
    c = {**CONFIG_DEFAULTS, **config}
    latents, width = c["num_latents"], c["d_latents"]
    cross_qk = c["qk_channels"] or (
        width if c["cross_attention_shape_for_attention"] == "q"
        else input_channels)
    cross = attention_layer_flops(
        latents, num_inputs, width, input_channels, cross_qk,
        c["v_channels"] or cross_qk, width,
        c["cross_attention_widening_factor"])
    self_qk = c["qk_channels"] or width
    self_v = c["v_channels"] or self_qk
    one_self = attention_layer_flops(
        latents, latents, width, width, self_qk, self_v, self_v,
        c["self_attention_widening_factor"])
    return cross + c["num_blocks"] * c["num_self_attends_per_block"] * one_self


def forward_flops(spec, num_inputs=None):
    """FLOPs of one example's forward pass of a workload's model."""
    c = {**CONFIG_DEFAULTS, **spec["config"]}
    latents, width = c["num_latents"], c["d_latents"]
    architecture = spec["architecture"]
    if architecture == "PerceiverModel":
        return encoder_flops(c, num_inputs, c["d_model"])
    if architecture == "PerceiverForMaskedLM":
        length, d_model = c["max_position_embeddings"], c["d_model"]
        decoder = attention_layer_flops(
            length, latents, d_model, width, MLM_DECODER_QK, d_model,
            d_model, 1)
        logits = 2 * length * d_model * c["vocab_size"]  # tied embedding
        return encoder_flops(c, length, d_model) + decoder + logits
    # Image classifiers: one learned query of d_latents channels.
    decoder = attention_layer_flops(1, latents, width, width, width, width,
                                    width, 1) + 2 * width * c["num_labels"]
    if architecture == "PerceiverForImageClassificationFourier":
        pixels = spec["image_size"] ** 2
        return encoder_flops(c, pixels, FOURIER_CHANNELS) + decoder
    if architecture == "PerceiverForImageClassificationLearned":
        pixels = c["image_size"] ** 2
        stem = 2 * pixels * 3 * 256 + 2 * pixels * 256 * 256  # conv, positions
        return stem + encoder_flops(c, pixels, LEARNED_CHANNELS) + decoder
    raise ValueError(f"No FLOP count for {architecture}.")


def training_step_flops(spec, batch):
    """Forward + backward: the backward pass does two products (input and
    weight gradients) per forward product, so 3x the forward count."""
    return 3 * batch * forward_flops(spec)


# --- process helpers (children) ------------------------------------------------


def read_status(field):
    """A `kB` field of /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux `clear_refs` 5); returns it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return read_status("VmRSS")


def available_memory():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def configure_torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def time_calls(call, repeats, budget_s, warmup_context=None):
    """One warm-up call (tracing, compilation, first allocations), then up
    to `repeats` timed calls; stops early when the next call would take the
    timed calls past `budget_s` (at least one is made when repeats > 0).

    Returns (the warm-up call's output, a record of the times).
    """
    start = time.perf_counter()
    if warmup_context is None:
        output = call()
    else:
        with warmup_context:
            output = call()
    first = time.perf_counter() - start
    times = []
    while len(times) < repeats:
        if times and sum(times) + times[-1] > budget_s:
            break
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return output, {
        "first_s": first,
        "times_s": times,
        "median_s": statistics.median(times) if times else None,
        "load": os.getloadavg()[0],
    }


def agreement(actual, expected):
    """max|diff|, its scale max(1, max|ref|), and the verdict."""
    import numpy as np

    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return {"max_diff": None, "scale": None, "agrees": False,
                "error": f"shape {actual.shape} != {expected.shape}"}
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(actual.astype("float64") - expected).max())
    return {"max_diff": diff, "scale": scale,
            "agrees": bool(diff <= TOLERANCE * scale)}


# --- inputs (identical in every process: seeded NumPy) -------------------------


def image_batch(size, batch):
    """Normalised-looking images `[B, 3, H, W]` (transformers' layout)."""
    import numpy as np

    rng = np.random.default_rng(SEED + batch)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)


def token_batch(length, batch, vocabulary):
    import numpy as np

    rng = np.random.default_rng(SEED + batch)
    ids = rng.integers(0, vocabulary, (batch, length))
    return ids, np.ones((batch, length), bool)


def labels_batch(batch, num_labels):
    import numpy as np

    return np.random.default_rng(SEED).integers(0, num_labels, batch)


def array_batch(num_inputs, channels):
    import numpy as np

    rng = np.random.default_rng(SEED)
    return rng.standard_normal((1, num_inputs, channels), dtype=np.float32)


def image_size_of(spec):
    if "image_size" in spec:
        return spec["image_size"]
    return spec["config"]["image_size"]


def transformers_inputs(spec, batch):
    """Keyword arguments of the transformers model's forward, as NumPy."""
    if spec["architecture"] == "PerceiverForMaskedLM":
        c = {**CONFIG_DEFAULTS, **spec["config"]}
        ids, mask = token_batch(c["max_position_embeddings"], batch,
                                c["vocab_size"])
        return {"inputs": ids.astype("int64"),
                "attention_mask": mask.astype("int64")}
    return {"inputs": image_batch(image_size_of(spec), batch)}


def keras_inputs(spec, batch):
    """The same data as the Keras task's native input (channels-last
    images; int32 ids with a boolean padding mask)."""
    import numpy as np

    if spec["architecture"] == "PerceiverForMaskedLM":
        c = {**CONFIG_DEFAULTS, **spec["config"]}
        ids, mask = token_batch(c["max_position_embeddings"], batch,
                                c["vocab_size"])
        return {"inputs": ids.astype("int32"), "padding_mask": mask}
    images = image_batch(image_size_of(spec), batch)
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


# --- transformers side ---------------------------------------------------------


def randomize(model, torch, seed):
    """Redraws every float parameter so that a wrong weight or operation
    shows in the outputs (transformers' init, std 0.02, makes attention
    nearly uniform): matrices (Linear, conv, embeddings, latents) ~
    N(0, 1/fan_in), LayerNorm scales 1 + N(0, 0.1^2), vectors N(0, 0.02^2).
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                tensor.normal_(0.0, 1.0 / math.sqrt(fan_in))
            elif "layernorm" in name and name.endswith("weight"):
                tensor.normal_(1.0, 0.1)
            else:
                tensor.normal_(0.0, 0.02)
    return model


def write_checkpoint(spec, directory, torch):
    """A seeded random transformers model, saved with save_pretrained."""
    import transformers

    config = transformers.PerceiverConfig(**spec["config"])
    config.architectures = [spec["architecture"]]
    torch.manual_seed(SEED)
    model = getattr(transformers, spec["architecture"])(config)
    randomize(model, torch, SEED).save_pretrained(directory)
    if spec["architecture"] == "PerceiverForImageClassificationFourier":
        # Our loader takes the input size from the image processor's output
        # size (transformers' model accepts any size).
        size = {"height": spec["image_size"], "width": spec["image_size"]}
        processor = {"image_processor_type": "PerceiverImageProcessor",
                     "size": size, "crop_size": size}
        with open(os.path.join(directory, "preprocessor_config.json"),
                  "w") as f:
            json.dump(processor, f, indent=2)


def load_transformers_model(spec, directory):
    import transformers

    start = time.perf_counter()
    cls = getattr(transformers, spec["architecture"])
    model = cls.from_pretrained(directory).eval()
    return model, time.perf_counter() - start


class MatmulFlopCounter:
    """Counts the FLOPs of the aten matrix products a call dispatches
    (torch's own formulas, `torch.utils.flop_counter.flop_registry`).

    torch's FlopCounterMode does the same but also tracks modules, which
    fails under `torch.no_grad` on transformers' Perceiver (torch 2.13).
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total = 0
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def transformers_inference(job, spec, torch):
    import numpy as np

    model, load_s = load_transformers_model(spec, job["checkpoint"])
    rows = ProgressRows(job)
    for batch in spec["batches"]:
        inputs = {k: torch.from_numpy(v)
                  for k, v in transformers_inputs(spec, batch).items()}

        def call():
            with torch.no_grad():
                return model(**inputs).logits

        base_rss = reset_peak_rss()
        counter = MatmulFlopCounter()
        logits, record = time_calls(call, job["repeats"], job["budget_s"],
                                    counter)
        np.save(reference_path(job, batch), logits.numpy())
        rows.append(dict(record, batch=batch, load_s=load_s,
                         peak_rss=read_status("VmHWM"), base_rss=base_rss,
                         counted_flops=counter.total))
    return rows


def transformers_training(job, spec, torch):
    import torch.nn.functional as F

    model, load_s = load_transformers_model(spec, job["checkpoint"])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"],
                                 eps=1e-8)
    rows = ProgressRows(job)
    for batch in spec["batches"]:
        images = torch.from_numpy(image_batch(image_size_of(spec), batch))
        labels = torch.from_numpy(
            labels_batch(batch, spec["config"]["num_labels"]))
        losses = []

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs=images).logits, labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            return losses[-1]

        base_rss = reset_peak_rss()
        counter = MatmulFlopCounter()
        first_loss, record = time_calls(step, job["repeats"], job["budget_s"],
                                        counter)
        with open(reference_path(job, batch, ".json"), "w") as f:
            json.dump({"first_loss": first_loss}, f)
        rows.append(dict(record, batch=batch, load_s=load_s,
                         first_loss=first_loss, last_loss=losses[-1],
                         steps=len(losses), peak_rss=read_status("VmHWM"),
                         base_rss=base_rss,
                         counted_flops=counter.total))
    return rows


def attention_score_bytes(spec, num_inputs, batch=1):
    """Bytes of transformers' float32 cross-attention scores."""
    c = {**CONFIG_DEFAULTS, **spec["config"]}
    return 4 * batch * c["num_cross_attention_heads"] * c["num_latents"] \
        * num_inputs


class address_space_limit:
    """RLIMIT_AS = what the process maps now + `headroom`, while inside:
    an allocation past it fails with an error instead of swapping or waking
    the OOM killer (which might pick another process)."""

    def __init__(self, headroom):
        self.headroom = headroom

    def __enter__(self):
        import resource

        self.previous = resource.getrlimit(resource.RLIMIT_AS)
        limit = read_status("VmSize") + self.headroom
        resource.setrlimit(resource.RLIMIT_AS, (limit, self.previous[1]))

    def __exit__(self, *exc):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, self.previous)


def transformers_scaling(job, spec, torch):
    """Sizes in increasing order; a size whose scores (twice: the scaled
    logits and the softmax exist together) do not fit is not run."""
    # 1 GiB for everything else on the machine; at most 20 GiB.
    headroom = min(20 * GIB, available_memory() - GIB)
    with address_space_limit(headroom):
        return scaling_rows(job, spec, torch, headroom)


def scaling_rows(job, spec, torch, headroom):
    import numpy as np

    model, load_s = load_transformers_model(spec, job["checkpoint"])
    channels = spec["config"]["d_model"]
    rows, failed = ProgressRows(job), None
    for size in spec["sizes"]:
        row = dict(size=size, load_s=load_s, first_s=None, times_s=[],
                   median_s=None)
        # Scores twice, plus the input, its LayerNorm, keys and values.
        needed = 2 * attention_score_bytes(spec, size) + 4 * size * channels * 4
        row["needed_bytes"] = needed
        free = available_memory() - GIB
        if failed:
            row["note"] = f"not run: M={failed:,} was out of memory"
        elif needed > min(free, headroom):
            row["note"] = (f"not run: needs {needed / GIB:.1f} GiB, "
                           f"{min(free, headroom) / GIB:.1f} GiB available")
        if "note" in row or not job["run_model"]:
            rows.append(row)
            continue
        x = torch.from_numpy(array_batch(size, channels))

        def call():
            with torch.no_grad():
                return model(inputs=x).last_hidden_state

        base_rss = reset_peak_rss()
        try:
            counter = MatmulFlopCounter()
            hidden, record = time_calls(call, job["repeats"], job["budget_s"],
                                        counter)
        except (RuntimeError, MemoryError) as e:
            if "memory" not in str(e).lower() and not isinstance(
                    e, MemoryError):
                raise
            failed = size
            row.update(note=f"out of memory ({type(e).__name__})",
                       peak_rss=read_status("VmHWM"), base_rss=base_rss)
            rows.append(row)
            continue
        np.save(reference_path(job, size), hidden.numpy())
        row.update(record, peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   counted_flops=counter.total)
        rows.append(row)
        x = hidden = None  # free this size's arrays before the next
    return rows


def transformers_child(job):
    """Per workload: the checkpoint, the reference outputs and (unless
    only references are wanted) transformers' timings."""
    torch = configure_torch(job["threads"])
    runners = {"inference": transformers_inference,
               "training": transformers_training,
               "scaling": transformers_scaling}

    def run(workload_job, spec):
        write_checkpoint(spec, workload_job["checkpoint"], torch)
        return runners[spec["kind"]](workload_job, spec, torch)

    run_workloads(job, run)


def reference_path(job, key, suffix=".npy"):
    return os.path.join(job["workdir"], f"{job['workload']}-{key}{suffix}")


# --- Keras side ----------------------------------------------------------------


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


def load_keras_model(spec, directory):
    from perceiver_keras import PerceiverBackbone
    from perceiver_keras import PerceiverTask

    start = time.perf_counter()
    if spec["architecture"] == "PerceiverModel":
        model = PerceiverBackbone.from_preset(directory)
    else:
        model = PerceiverTask.from_preset(directory)
        # keras-hub tasks run their preprocessor (image crop and resize,
        # tokenizer) inside predict_on_batch / train_on_batch; the inputs
        # here are already model inputs, as transformers' are.
        model.preprocessor = None
    return model, time.perf_counter() - start


def keras_inference(job, spec, keras):
    import numpy as np

    model, load_s = load_keras_model(spec, job["checkpoint"])
    rows = ProgressRows(job)
    for batch in spec["batches"]:
        x = keras_inputs(spec, batch)
        base_rss = reset_peak_rss()
        logits, record = time_calls(lambda: model.predict_on_batch(x),
                                    job["repeats"], job["budget_s"])
        row = dict(record, batch=batch, load_s=load_s,
                   peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   execution=execution_of(model, keras),
                   unbuilt_layers=unbuilt_layers(model))
        path = reference_path(job, batch)
        if os.path.exists(path):
            row.update(agreement(logits, np.load(path)), reference="transformers")
        rows.append(row)
    return rows


def keras_training(job, spec, keras):
    model, load_s = load_keras_model(spec, job["checkpoint"])
    model.compile(
        optimizer=keras.optimizers.Adam(spec["learning_rate"], epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=None,
    )
    rows = ProgressRows(job)
    for batch in spec["batches"]:
        images = keras_inputs(spec, batch)
        labels = labels_batch(batch, spec["config"]["num_labels"])
        losses = []

        def step():
            logs = model.train_on_batch(images, labels, return_dict=True)
            losses.append(float(logs["loss"]))
            return losses[-1]

        base_rss = reset_peak_rss()
        first_loss, record = time_calls(step, job["repeats"], job["budget_s"])
        row = dict(record, batch=batch, load_s=load_s, first_loss=first_loss,
                   last_loss=losses[-1], steps=len(losses),
                   peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   execution=execution_of(model, keras),
                   unbuilt_layers=unbuilt_layers(model))
        path = reference_path(job, batch, ".json")
        if os.path.exists(path):
            with open(path) as f:
                expected = json.load(f)["first_loss"]
            row.update(agreement(first_loss, expected),
                       reference="transformers")
        rows.append(row)
    return rows


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
                                    job["repeats"], job["budget_s"])
        row = dict(record, size=size, load_s=load_s,
                   peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   path=attention.implementation_for(latents, size),
                   execution=execution_of(model, keras))
        np.save(reference_path(job, f"{size}-{job['backend']}"), hidden)
        expected, reference = scaling_reference(job, size)
        if expected is not None:
            row.update(agreement(hidden, expected), reference=reference)
        rows.append(row)
        x = hidden = None  # free this size's arrays before the next
    return rows


def keras_child(job):
    keras = configure_keras(job["threads"])
    runners = {"inference": keras_inference, "training": keras_training,
               "scaling": keras_scaling}

    def run(workload_job, spec):
        try:
            return runners[spec["kind"]](workload_job, spec, keras)
        finally:
            keras.backend.clear_session()  # free the model's graphs

    run_workloads(job, run)


def run_workloads(job, run):
    """Runs each workload of a child; its rows (or its error) go to the
    results file as soon as it ends, so a crash loses one workload only."""
    results = {}
    for workload in job["workloads"]:
        name = workload["workload"]
        start = time.perf_counter()
        try:
            rows = run(dict(job, **workload), workload["spec"])
            results[name] = {"rows": list(rows)}
        except Exception:
            results[name] = {"error": traceback.format_exc()}
            progress(f"{job['framework']} {name} FAILED: "
                     f"{results[name]['error'].strip().splitlines()[-1]}")
        results[name]["wall_s"] = time.perf_counter() - start
        gc.collect()
        write_json_atomically(results, job["out"])


def write_json_atomically(value, path):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


PROGRESS = "@@ "


class ProgressRows(list):
    """A workload's result rows; each is shown as soon as it is added."""

    def __init__(self, job):
        super().__init__()
        self.job = job

    def append(self, row):
        super().append(row)
        progress(describe_row(self.job["framework"], self.job["workload"],
                              row))


def progress(message):
    """A line the parent shows while the child runs."""
    print(PROGRESS + message, flush=True)


def machine_child(job):
    """float32 matmul rate (GFLOP/s): median of timed n x n products in
    torch and NumPy, the best of them as the practical limit."""
    import numpy as np

    torch = configure_torch(job["threads"])
    rates = {}
    for n, repeats in job["matmul_sizes"].items():
        n = int(n)
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for name, call in (("torch", lambda: ta @ tb),
                           ("numpy", lambda: a @ b)):
            _, record = time_calls(call, repeats, 1e9)
            rates[f"{name} {n}"] = 2 * n**3 / record["median_s"] / 1e9
    return {"matmul_gflops": rates,
            "limit_gflops": max(rates.values()),
            "load": os.getloadavg()[0]}


# --- parent: running the children -------------------------------------------


def child_env(backend, threads):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


def run_child(job, workdir, timeout):
    """Runs one child (`job["role"]`) in a fresh interpreter, showing its
    progress lines. Returns (its results file's content or None, error
    message or None, wall seconds)."""
    tag = job["framework"]
    job = dict(job, out=os.path.join(workdir, f"{tag}.out.json"))
    job_path = os.path.join(workdir, f"{tag}.job.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    stderr_path = os.path.join(workdir, f"{tag}.stderr.txt")
    start = time.perf_counter()
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", job_path],
            env=child_env(job.get("backend"), job["threads"]),
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        watchdog = threading.Timer(timeout, child.kill)
        watchdog.start()
        for line in child.stdout:
            if line.startswith(PROGRESS):
                log("  " + line[len(PROGRESS):].rstrip())
        returncode = child.wait()
        timed_out = not watchdog.is_alive() and returncode < 0
        watchdog.cancel()
    wall = time.perf_counter() - start
    error = None
    if timed_out:
        error = f"timed out after {timeout} s"
    elif returncode:
        with open(stderr_path) as f:
            tail = f.read()[-2000:]
        error = f"exit code {returncode}: {tail}"
    result = None
    if os.path.exists(job["out"]):
        with open(job["out"]) as f:
            result = json.load(f)
    return result, error, wall


def child_main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    if job["role"] == "machine":
        write_json_atomically(machine_child(job), job["out"])
    elif job["role"] == "transformers":
        transformers_child(job)
    else:
        keras_child(job)
    return 0


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def describe_row(framework, workload, row):
    key = f"M={row['size']:,}" if "size" in row else f"batch {row['batch']}"
    if row.get("note") or row.get("first_s") is None:
        return f"{framework} {workload} {key}: {row.get('note', 'not run')}"
    median = row.get("median_s")
    timing = (f"median {median:.3f} s of {len(row['times_s'])}"
              if median is not None else "reference only")
    check = ""
    if row.get("max_diff") is not None:
        check = (f", max|diff| {row['max_diff']:.2g} "
                 f"({'ok' if row['agrees'] else 'DIFFERS'})")
    return (f"{framework} {workload} {key}: warm-up {row['first_s']:.2f} s, "
            f"{timing}{check}")


def run_frameworks(names, specs, args, workdir):
    """transformers first (it writes every checkpoint and the reference
    outputs), then one child per Keras backend, each running all the
    workloads. Returns {workload: {framework: result}}."""
    time_transformers = "transformers" in args.frameworks
    workloads = [
        dict(workload=name, spec=specs[name],
             checkpoint=os.path.join(workdir, f"{name}-checkpoint"),
             # Without transformers in --frameworks the scaling workload
             # needs its checkpoint only (no references: they cost minutes).
             run_model=time_transformers or specs[name]["kind"] != "scaling")
        for name in names
    ]
    base = dict(workdir=workdir, threads=args.threads, budget_s=args.budget,
                repeats=args.repeats)
    all_results = {name: {} for name in names}
    walls = {}
    children = [("transformers", None)] + [
        ("keras", b) for b in KERAS_BACKENDS if b in args.frameworks]
    for role, backend in children:
        framework = backend or "transformers"
        log(f"{framework}: {', '.join(names)}")
        job = dict(base, role=role, backend=backend, framework=framework,
                   workloads=workloads)
        if role == "transformers" and not time_transformers:
            job["repeats"] = 0  # checkpoints and reference outputs only
        result, error, wall = run_child(job, workdir, args.timeout)
        walls[framework] = wall
        log(f"  {framework} done in {wall:.0f} s" +
            (f" with an error: {error}" if error else ""))
        for name in names:
            entry = (result or {}).get(name)
            if entry is None:  # the child died before finishing it
                entry = {"error": error or "no result", "wall_s": 0.0}
            if role == "keras" or time_transformers or "error" in entry:
                all_results[name][framework] = entry
        if role == "transformers":
            # A Keras child needs the checkpoint of each workload it runs.
            workloads = [w for w in workloads
                         if "rows" in (result or {}).get(w["workload"], {})]
    return all_results, walls


# --- parent: tables and plot ----------------------------------------------------


def fmt(value, digits=2, unit=""):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def ratio(reference_s, ours_s):
    """Throughput ratio: transformers' time / ours (> 1: we are faster)."""
    if not reference_s or not ours_s:
        return None
    return reference_s / ours_s


def rows_by_key(results, key):
    """{framework: {key value: row}} of the frameworks that ran."""
    table = {}
    for framework, result in results.items():
        if "rows" in result:
            table[framework] = {row[key]: row for row in result["rows"]}
    return table


def agreement_cell(row, framework):
    if framework == "transformers":
        return "reference", "—"
    if row.get("max_diff") is None:
        return "—", row.get("error", "no reference")
    verdict = "yes" if row["agrees"] else "**NO**"
    where = row.get("reference", "")
    if where and where != "transformers":
        verdict += f" (vs {where})"
    return f"{row['max_diff']:.1e} / {row['scale']:.3g}", verdict


def execution_cell(framework, row):
    if framework == "transformers":
        return "eager, no_grad" if "first_loss" not in row else "eager"
    return row.get("execution", "?")


def speed_cells(row, flops, limit, reference_row):
    median = row.get("median_s")
    gflops = flops / median / 1e9 if median else None
    reference_median = reference_row.get("median_s") if reference_row else None
    return [
        fmt(row.get("first_s"), 2),
        fmt(median, 3),
        str(len(row.get("times_s", []))),
        fmt(ratio(reference_median, median), 2, "x"),
        fmt(gflops, 1),
        fmt(100 * gflops / limit if gflops else None, 0, "%"),
    ]


def error_rows(results, columns):
    lines = []
    for framework, result in results.items():
        if "error" in result:
            message = result["error"].strip().splitlines()
            cells = [framework, f"FAILED: {message[-1][:150] if message else ''}"]
            lines.append("| " + " | ".join(cells + [""] * (columns - 2)) + " |")
    return lines


def inference_table(specs, all_results, limit):
    header = ("| workload | batch | framework | execution | load (s) "
              "| warm-up (s) | median (s) | runs | throughput vs transformers "
              "| GFLOP/s | % of limit | peak RSS (MiB) | max abs diff / scale "
              "| agrees | load avg |")
    lines = [header, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:"
                     "|---:|---:|---|---:|"]
    for name, results in all_results.items():
        spec = specs[name]
        if spec["kind"] != "inference":
            continue
        table = rows_by_key(results, "batch")
        for batch in spec["batches"]:
            flops = batch * forward_flops(spec)
            reference_row = table.get("transformers", {}).get(batch)
            for framework, rows in table.items():
                row = rows.get(batch)
                if row is None:
                    continue
                diff, verdict = agreement_cell(row, framework)
                lines.append("| " + " | ".join([
                    name, str(batch), framework, execution_cell(framework, row),
                    fmt(row["load_s"], 1),
                    *speed_cells(row, flops, limit, reference_row),
                    fmt(row["peak_rss"] / MIB, 0), diff, verdict,
                    fmt(row["load"], 1),
                ]) + " |")
        lines += error_rows(results, 15)
    return "\n".join(lines)


def training_table(specs, all_results, limit):
    header = ("| workload | batch | framework | execution | warm-up step (s) "
              "| median step (s) | runs | throughput vs transformers "
              "| GFLOP/s | % of limit | peak RSS (MiB) | first-step loss "
              "| loss diff / scale | agrees | loss after last step "
              "| load avg |")
    lines = [header, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:"
                     "|---:|---:|---|---:|---:|"]
    for name, results in all_results.items():
        spec = specs[name]
        if spec["kind"] != "training":
            continue
        table = rows_by_key(results, "batch")
        for batch in spec["batches"]:
            flops = training_step_flops(spec, batch)
            reference_row = table.get("transformers", {}).get(batch)
            for framework, rows in table.items():
                row = rows.get(batch)
                if row is None:
                    continue
                diff, verdict = agreement_cell(row, framework)
                lines.append("| " + " | ".join([
                    name, str(batch), framework,
                    execution_cell(framework, row),
                    *speed_cells(row, flops, limit, reference_row),
                    fmt(row["peak_rss"] / MIB, 0), fmt(row["first_loss"], 5),
                    diff, verdict,
                    f"{row['last_loss']:.5f} ({row['steps']} steps)",
                    fmt(row["load"], 1),
                ]) + " |")
        lines += error_rows(results, 16)
    return "\n".join(lines)


def scaling_table(spec, results, limit):
    header = ("| M | framework | attention path | warm-up (s) | median (s) "
              "| runs | throughput vs transformers | GFLOP/s | % of limit "
              "| peak RSS (MiB) | growth during call (MiB) "
              "| max abs diff / scale | agrees | note |")
    lines = [header, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:"
                     "|---:|---|---|"]
    table = rows_by_key(results, "size")
    for size in spec["sizes"]:
        flops = forward_flops(spec, size)
        reference_row = table.get("transformers", {}).get(size)
        for framework, rows in table.items():
            row = rows.get(size)
            if row is None:
                continue
            path = "plain" if framework == "transformers" else row.get("path")
            if row.get("note"):
                lines.append("| " + " | ".join(
                    [f"{size:,}", framework, path] + ["—"] * 10
                    + [row["note"]]) + " |")
                continue
            diff, verdict = agreement_cell(row, framework)
            lines.append("| " + " | ".join([
                f"{size:,}", framework, path,
                *speed_cells(row, flops, limit, reference_row),
                fmt(row["peak_rss"] / MIB, 0),
                fmt(max(0, row["peak_rss"] - row["base_rss"]) / MIB, 0),
                diff, verdict, "",
            ]) + " |")
    lines += error_rows(results, 14)
    return "\n".join(lines)


def flop_check_lines(specs, all_results):
    """Analytic FLOPs vs torch's count on transformers' warm-up call."""
    lines = []
    for name, results in all_results.items():
        rows = results.get("transformers", {}).get("rows", [])
        spec = specs[name]
        for row in rows:
            counted = row.get("counted_flops")
            if not counted:
                continue
            if spec["kind"] == "scaling":
                key, analytic = f"M={row['size']:,}", forward_flops(
                    spec, row["size"])
            elif spec["kind"] == "training":
                key = f"batch {row['batch']}"
                analytic = training_step_flops(spec, row["batch"])
            else:
                key = f"batch {row['batch']}"
                analytic = row["batch"] * forward_flops(spec)
            lines.append(f"| {name} | {key} | {analytic / 1e9:,.2f} "
                         f"| {counted / 1e9:,.2f} | {analytic / counted:.4f} |")
    if not lines:
        return ""
    return "\n".join(["| workload | size | analytic GFLOP | counted GFLOP "
                      "| analytic / counted |", "|---|---|---:|---:|---:|"]
                     + lines)


def versions():
    names = ("keras", "keras-hub", "torch", "jax", "tensorflow",
             "transformers", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


COLORS = {"transformers": "#7f7f7f", "torch": "#d62728", "jax": "#1f77b4",
          "tensorflow": "#ff7f0e"}


def write_plot(specs, all_results, limit, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    plot_throughput(axes[0], specs, all_results, limit)
    for name, results in all_results.items():
        if specs[name]["kind"] == "scaling":
            plot_scaling(axes[1], axes[2], specs[name], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(ax, specs, all_results, limit):
    """GFLOP/s per inference / training row, the ratio to transformers
    above each bar, the matmul limit as a line."""
    groups = []  # (label, {framework: (GFLOP/s, ratio)})
    for name, results in all_results.items():
        spec = specs[name]
        if spec["kind"] == "scaling":
            continue
        table = rows_by_key(results, "batch")
        for batch in spec["batches"]:
            flops = (training_step_flops(spec, batch)
                     if spec["kind"] == "training"
                     else batch * forward_flops(spec))
            reference = table.get("transformers", {}).get(batch, {})
            values = {}
            for framework, rows in table.items():
                median = rows.get(batch, {}).get("median_s")
                if median:
                    values[framework] = (
                        flops / median / 1e9,
                        ratio(reference.get("median_s"), median))
            kind = "training step" if spec["kind"] == "training" else "forward"
            groups.append((f"{name}\nbatch {batch} {kind}", values))
    width = 0.8 / len(FRAMEWORKS)
    for i, framework in enumerate(FRAMEWORKS):
        xs = [g for g, (_, values) in enumerate(groups) if framework in values]
        if not xs:
            continue
        positions = [x + (i - (len(FRAMEWORKS) - 1) / 2) * width for x in xs]
        heights = [groups[g][1][framework][0] for g in xs]
        ax.bar(positions, heights, width, label=framework,
               color=COLORS[framework])
        for x, g, height in zip(positions, xs, heights):
            speedup = groups[g][1][framework][1]
            if speedup and framework != "transformers":
                ax.text(x, height, f"{speedup:.2f}x", ha="center",
                        va="bottom", fontsize=7)
    if limit:
        ax.axhline(limit, color="black", linestyle="--", linewidth=1)
        ax.text(-0.45, limit, f"matmul limit {limit:.0f}", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_ylabel("achieved GFLOP/s (median)")
    ax.set_title("Throughput; labels: speed vs transformers")
    ax.legend(fontsize=8)


def plot_scaling(time_ax, memory_ax, spec, results):
    """Forward time and memory growth against M; transformers' sizes that
    were not run appear as hollow markers at their predicted memory."""
    table = rows_by_key(results, "size")
    for framework, rows in table.items():
        ran = [rows[m] for m in spec["sizes"]
               if m in rows and rows[m].get("median_s")]
        color = COLORS[framework]
        if ran:
            sizes = [r["size"] for r in ran]
            time_ax.plot(sizes, [r["median_s"] for r in ran], "o-",
                         label=framework, color=color)
            # Floor of 1 MiB: the log axis cannot show zero growth.
            memory_ax.plot(sizes, [max(1.0, (r["peak_rss"] - r["base_rss"])
                                       / MIB) for r in ran], "o-",
                           label=framework, color=color)
        skipped = [rows[m] for m in spec["sizes"]
                   if m in rows and not rows[m].get("median_s")
                   and rows[m].get("needed_bytes")]
        if skipped:
            memory_ax.plot([r["size"] for r in skipped],
                           [r["needed_bytes"] / MIB for r in skipped], "o--",
                           mfc="none", color=color,
                           label=f"{framework}: needed, not run")
    time_ax.set(xscale="log", yscale="log", xlabel="inputs M",
                ylabel="forward time (s, median)",
                title="Encoder forward time vs input length")
    memory_ax.set(xscale="log", yscale="log", xlabel="inputs M",
                  ylabel="peak RSS - RSS before the call (MiB)",
                  title="Encoder memory growth vs input length")
    for ax in (time_ax, memory_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)


def markdown(meta, specs, all_results):
    machine = meta["machine"]
    limit = machine.get("limit_gflops")
    rates = ", ".join(f"{k}: {v:.1f}" for k, v in
                      machine.get("matmul_gflops", {}).items())
    parts = [
        "# transformers (PyTorch) vs perceiver_keras",
        "",
        *(["**--quick: tiny models, a smoke test; the times mean "
           "nothing.**", ""] if meta["quick"] else []),
        f"Written by `{meta['command']}` on {meta['date']} in "
        f"{meta['wall_s'] / 60:.1f} min ({meta['machine_name']}, "
        f"{meta['cores']} cores, {meta['threads']} threads per framework; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ").",
        "",
        f"Practical limit: {fmt(limit, 1)} GFLOP/s, the best median float32 "
        f"matmul rate measured at the start ({rates}). Load average at the "
        f"start {meta['load_start']:.1f}, at the end {meta['load_end']:.1f} "
        "(the machine may be shared: a load above the core count slows "
        "every framework, eager torch most).",
        "",
        "Times are medians of the timed runs after one warm-up call (the "
        "warm-up includes tracing and XLA compilation). *Throughput vs "
        "transformers* = transformers' median / ours (above 1: faster than "
        "transformers). GFLOP/s count matrix products only "
        "(`forward_flops`; a training step is 3x the forward). *max abs diff "
        "/ scale*: max|ours - transformers| and max(1, max|transformers|); "
        f"the outputs agree when the first is at most {TOLERANCE:g} x the "
        "second. Peak RSS is the process's VmHWM, reset before each row.",
        "",
    ]
    if any(s["kind"] == "inference" for s in specs.values()
           if s["name"] in all_results):
        parts += ["## Inference", "", inference_table(specs, all_results,
                                                      limit), ""]
    if any(s["kind"] == "training" for s in specs.values()
           if s["name"] in all_results):
        parts += [
            "## One training step", "",
            "Forward, backward and Adam update (lr 1e-4, eps 1e-8) with "
            "cross-entropy on one fixed batch: transformers with "
            "`torch.optim.Adam`, ours with `task.compile(...)` + "
            "`task.train_on_batch` (Keras' default jit_compile). The "
            "first-step losses (same weights, same batch) must agree. The "
            "loss after the last step is for information: Keras' Adam adds "
            "epsilon after the bias correction and torch's before, so "
            "later steps need not agree to the tolerance.", "",
            training_table(specs, all_results, limit), ""]
    for name, results in all_results.items():
        spec = specs[name]
        if spec["kind"] != "scaling":
            continue
        c = spec["config"]
        parts += [
            "## Encoder scaling with the input length", "",
            f"Bare `PerceiverModel`: inputs `[1, M, {c['d_model']}]`, "
            f"{c['num_latents']} latents x {c['d_latents']}, "
            f"{c['num_cross_attention_heads']} cross-attention heads, "
            f"{c['num_self_attends_per_block']} self-attention layer. One "
            "process per framework runs the sizes in increasing order; "
            "*growth during call* is the peak minus the RSS just before the "
            "warm-up call. transformers materialises "
            f"{c['num_cross_attention_heads']} x {c['num_latents']} x M "
            "float32 scores (twice, while the softmax runs); it runs under "
            "RLIMIT_AS, and sizes whose scores cannot fit in the available "
            "memory are not run. Sizes without a transformers output are "
            "checked against another Keras backend.", "",
            scaling_table(spec, results, limit), ""]
    flops = flop_check_lines(specs, all_results)
    if flops:
        parts += ["## FLOP count check", "",
                  "`forward_flops` against torch's FLOP formulas "
                  "(`torch.utils.flop_counter`) applied to the matrix "
                  "products transformers' warm-up call dispatches (forward "
                  "and backward for training).", "", flops, ""]
    parts += ["## Where the time went", "",
              "Seconds per workload inside each framework's process "
              "(loading, warm-up and timed runs; transformers also builds "
              "and saves each checkpoint), and each process's wall time "
              "with interpreter start-up and imports.", "",
              "| workload | " + " | ".join(meta["child_wall_s"]) + " |",
              "|---|" + "---:|" * len(meta["child_wall_s"])]
    for name, results in all_results.items():
        parts.append(f"| {name} | " + " | ".join(
            fmt(results.get(f, {}).get("wall_s"), 0)
            for f in meta["child_wall_s"]) + " |")
    parts.append("| whole process | " + " | ".join(
        f"{w:.0f}" for w in meta["child_wall_s"].values()) + " |")
    return "\n".join(parts) + "\n"


# --- main -------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke test of ~2 minutes")
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS),
                        choices=FRAMEWORKS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        choices=list(WORKLOADS))
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="input lengths M of encoder-scaling (default "
                             "1k 4k 16k 64k 256k 1M; --quick: 1k 16k 128k)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs after the warm-up (default 3)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed runs per row: fewer runs when "
                             "the next would exceed it (default 30)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads per framework (default: all cores)")
    parser.add_argument("--timeout", type=int, default=1200,
                        help="seconds per child process (default 1200)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the tables; write no results files")
    parser.add_argument("--results-dir", default=RESULTS_DIR,
                        help="where the .md, .json and .png go "
                             "(default benchmarks/results)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    specs = workload_specs(args.quick)
    if args.sizes:
        specs["encoder-scaling"]["sizes"] = sorted(args.sizes)
    for name, spec in specs.items():
        spec["name"] = name
    workdir = tempfile.mkdtemp(prefix="compare_transformers-")
    try:
        log("measuring the float32 matmul rate")
        # n x n: repeats (4096 takes ~2 s per product on 2 cores).
        sizes = {1024: 5} if args.quick else {2048: 5, 4096: 3}
        machine_job = dict(threads=args.threads, matmul_sizes=sizes)
        machine, error, _ = run_child(
            dict(machine_job, role="machine", framework="machine"), workdir,
            args.timeout)
        machine = machine or {"error": error}
        log(f"  {machine}")
        names = [name for name in WORKLOADS if name in args.workloads]
        all_results, child_walls = run_frameworks(names, specs, args,
                                                  workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = "python benchmarks/compare_transformers.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    meta = dict(
        command=command, date=str(datetime.date.today()),
        machine_name=f"{platform.machine()} {platform.processor() or ''}"
        .strip(), cores=os.cpu_count(), threads=args.threads,
        versions=versions(), machine=machine, quick=args.quick,
        load_start=load_start, load_end=os.getloadavg()[0],
        wall_s=time.perf_counter() - started, child_wall_s=child_walls,
    )
    text = markdown(meta, specs, all_results)
    print(text)
    if args.no_write:
        return 0
    os.makedirs(args.results_dir, exist_ok=True)
    base = os.path.join(args.results_dir, RESULT_NAME)
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "specs": specs, "results": all_results}, f,
                  indent=1)
    write_plot(specs, all_results, machine.get("limit_gflops") or 0,
               base + ".png")
    log(f"wrote {base}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
