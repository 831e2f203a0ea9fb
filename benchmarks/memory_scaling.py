"""Peak memory of a long-input forward pass, per backend and input size.

    python benchmarks/memory_scaling.py            # all backends, writes
                                                   # benchmarks/results/memory_scaling.md
    python benchmarks/memory_scaling.py --backends jax --sizes 1000 1000000
    python benchmarks/memory_scaling.py --models hf --sizes 1000000

Each (backend, M) runs in a fresh child process, so its peak resident set
(VmHWM) belongs to that run alone. The child builds a backbone with 512
latents x 1024 channels and 8 cross-attention heads (attention
implementation "auto"), makes one float32 input `[1, M, 64]` and runs the
forward pass once with `predict_on_batch` (a tf.function on TensorFlow, a
jit-compiled function on JAX, eager under `torch.no_grad` on torch). The
bound checked is the issue's: between M = 1,000 and a
larger M, peak RSS may grow by at most 2 x the input's bytes (the NumPy
input and its backend copy) + 512 MiB (a working set that does not grow
with M). The plain path would hold 8 x 512 x M float32 scores (16 GB at
M = 10^6), twice.

`--models` adds rows for models that come out of the converters, run by
their command lines as a user would: "hf" exports the same backbone as a
transformers `PerceiverModel` checkpoint and runs `conversion/convert_hf.py
DIR --output PRESET --inputs x.npz --save-outputs y.npz` in the child (the
comparison with transformers is left to its default, which skips it when
transformers would not fit; the row says what it did); "deepmind" writes a
DeepMind image classifier checkpoint (Fourier positions, 6 bands, the same
encoder sizes, for `sqrt(M) x sqrt(M)` images) and runs
`conversion/convert_deepmind.py`. Each child's peak includes converting and
saving the preset, which does not grow with M.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "memory_scaling.md")
CONVERTED_RESULTS = os.path.join(HERE, "results",
                                 "memory_scaling_converted.md")
MIB = 2**20
CHANNELS = 64
BASE_SIZE = 1000
WORKING_SET = 512 * MIB
DEFAULT_SIZES = {
    "tensorflow": [1000, 1_000_000],
    "torch": [1000, 1_000_000],
    "jax": [1000, 1_000_000, 4_000_000],
}
# Rows for converted models (--models): M = 1,000 (32 x 32 images for
# "deepmind") is the base; the large size is run once.
MODEL_SIZES = {"hf": [1_000_000], "deepmind": [512 * 512]}
MODELS = ("backbone", "hf", "deepmind")
# Training steps (remat=True): enough sizes to see the growth is linear.
TRAIN_BACKENDS = ["jax"]
TRAIN_SIZES = [1000, 262_144, 1_000_000]


def peak_rss_bytes():
    """VmHWM: the process's peak resident set, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def benchmark_backbone(chunk_size=None, train=False):
    from perceiver_keras import PerceiverBackbone

    return PerceiverBackbone(
        inputs_shape=(None, CHANNELS),
        num_latents=512,
        latent_dim=1024,
        num_cross_attend_heads=8,
        key_value_chunk_size=chunk_size,
        remat=train,
    )


def deepmind_config(side):
    """The benchmark's encoder as a DeepMind image classifier for
    `side` x `side` images (3 + 26 Fourier channels, projected to 256 for
    the 8 heads)."""
    from perceiver_keras.conversion.deepmind_image import pixel_fourier_config

    return pixel_fourier_config(side, {
        "num_blocks": 1, "num_self_attends_per_block": 6,
        "z_index_dim": 512, "num_z_channels": 1024, "qk_channels": 256,
        "num_cross_attend_heads": 8, "num_self_attend_heads": 8,
    })


def converter_child(model, size, workdir, compare=True):
    """Writes a checkpoint, then runs the converter's command line on an
    input of `size` positions; prints a JSON line. Without `compare`, the
    hf command line is given `--no-compare`."""
    import contextlib
    import importlib.util
    import io

    import numpy as np

    from perceiver_keras.layers.chunked_attention import (
        recording_attention_calls,
    )

    rng = np.random.default_rng(0)
    if model == "hf":
        from perceiver_keras.conversion.hf_export import export_transformers

        source = os.path.join(workdir, "hf")
        export_transformers(benchmark_backbone(), source)
        x = rng.standard_normal((1, size, CHANNELS), dtype=np.float32)
        inputs = {"inputs": x}
        argv = [source]
    else:
        from perceiver_keras.conversion.deepmind import convert_deepmind
        from perceiver_keras.conversion.deepmind import kind_module
        from perceiver_keras.conversion.deepmind import save_deepmind_checkpoint

        side = round(size**0.5)
        config = deepmind_config(side)
        checkpoint = os.path.join(workdir, "checkpoint.pickle")
        task = kind_module(config["kind"]).build_task(
            config["deepmind_config"])
        save_deepmind_checkpoint(task, config, checkpoint)
        del task
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f)
        x = rng.standard_normal((1, side, side, 3), dtype=np.float32)
        size = side * side
        inputs = {"images": x}
        argv = [checkpoint, "--config", os.path.join(workdir, "config.json")]
    np.savez(os.path.join(workdir, "x.npz"), **inputs)
    input_bytes = x.nbytes
    del x, inputs
    argv += ["--output", os.path.join(workdir, "preset"),
             "--inputs", os.path.join(workdir, "x.npz"),
             "--save-outputs", os.path.join(workdir, "y.npz")]
    if model == "hf" and not compare:
        argv.append("--no-compare")
    script = os.path.join(os.path.dirname(HERE), "conversion",
                          f"convert_{model}.py")
    spec = importlib.util.spec_from_file_location(f"convert_{model}", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    printed = io.StringIO()
    start = time.perf_counter()
    with recording_attention_calls() as calls, \
            contextlib.redirect_stdout(printed):
        status = cli.main(argv)
    seconds = time.perf_counter() - start
    sys.stderr.write(printed.getvalue())
    lines = printed.getvalue().splitlines()
    comparison = [
        " ".join(lines[i:i + 2] if line.startswith("against") else [line])
        for i, line in enumerate(lines)
        if "comparison" in line or line.startswith("against")
    ]
    assert status == 0, printed.getvalue()
    print(json.dumps({
        "peak_rss": peak_rss_bytes(),
        "seconds": seconds,
        "input_bytes": input_bytes,
        "size": size,
        "implementation": next(
            (c.implementation for c in calls if c.num_keys == size), "?"),
        "comparison": comparison[0] if comparison else "",
        "load": os.getloadavg()[0],
    }))


def child(size, chunk_size, train=False):
    """One forward pass (or, with `train`, one training step with
    `remat=True`); prints a JSON line with the measurements."""
    import numpy as np

    from perceiver_keras import PerceiverClassifier

    backbone = benchmark_backbone(chunk_size, train)
    implementation = backbone.cross_attends[0].attention.implementation_for(
        512, size
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, size, CHANNELS), dtype=np.float32)
    start = time.perf_counter()
    if train:
        classifier = PerceiverClassifier(backbone, num_classes=10)
        classifier.compile()
        loss = classifier.train_on_batch(x, np.array([3]))
        assert np.isfinite(loss).all()
    else:
        out = backbone.predict_on_batch(x)
        assert out.shape == (1, 512, 1024) and np.isfinite(out).all()
    seconds = time.perf_counter() - start
    load = os.getloadavg()[0]
    print(json.dumps({
        "peak_rss": peak_rss_bytes(),
        "seconds": seconds,
        "input_bytes": x.nbytes,
        "implementation": implementation,
        "load": load,
    }))


def run_json_child(backend, arguments, labels, timeout):
    """`python <arguments>` under KERAS_BACKEND=backend: the last JSON line
    it prints, with `labels` and its `wall` time added; or `labels` with an
    "error" (exit status and the end of stderr, or the timeout)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, *arguments], env=env,
                                capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(labels, error=f"timed out after {timeout} s")
    wall = time.perf_counter() - start
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode or not lines:
        return dict(labels, error=f"exit {result.returncode}: "
                                  + result.stderr[-1500:])
    return dict(json.loads(lines[-1]), **labels, wall=wall)


def run_child(backend, size, chunk_size, timeout, train=False,
              model="backbone", compare=True):
    import tempfile

    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    workdir = tempfile.TemporaryDirectory(prefix="memory_scaling-")
    command = [sys.executable, __file__, "--child", str(size)]
    if model != "backbone":
        command += ["--model", model, "--workdir", workdir.name]
        if not compare:
            command.append("--no-compare")
    if chunk_size:
        command += ["--chunk-size", str(chunk_size)]
    if train:
        command.append("--train")
    start = time.perf_counter()
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - start
    workdir.cleanup()
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(
            f"{backend} {model} M={size} failed ({result.returncode}):\n"
            + result.stderr[-3000:]
        )
    record = json.loads(lines[-1])
    record.setdefault("size", size)
    record.update(backend=backend, wall=wall, train=train, model=model)
    return record


def train_table(records):
    """Training rows: growth over M = 1k, and per input element."""
    lines = [
        "| backend | M | path | peak RSS (MiB) | growth vs M=1k (MiB) "
        "| growth per input element (bytes) | step (s) | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    base = {r["backend"]: r for r in records if r["size"] == BASE_SIZE}
    for r in records:
        grow = r["peak_rss"] - base[r["backend"]]["peak_rss"]
        per_element = (
            f"{grow / (r['size'] - BASE_SIZE):,.0f}"
            if r["size"] != BASE_SIZE else "—"
        )
        lines.append(
            f"| {r['backend']} | {r['size']:,} | {r['implementation']} "
            f"| {r['peak_rss'] / MIB:,.0f} | {grow / MIB:,.0f} "
            f"| {per_element} | {r['seconds']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def table(records):
    lines = [
        "| backend | M | path | peak RSS (MiB) | growth vs M=1k (MiB) "
        "| bound (MiB) | result | forward (s) | process wall (s) | load |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    ok = True
    base = {r["backend"]: r for r in records if r["size"] == BASE_SIZE}
    for r in records:
        row = base.get(r["backend"])
        if r["size"] == BASE_SIZE or row is None:
            growth = bound = verdict = "—"
        else:
            grow = r["peak_rss"] - row["peak_rss"]
            limit = 2 * r["input_bytes"] + WORKING_SET
            passed = grow <= limit
            ok &= passed
            growth = f"{grow / MIB:,.0f}"
            bound = f"{limit / MIB:,.0f}"
            verdict = "pass" if passed else "FAIL"
        lines.append(
            f"| {r['backend']} | {r['size']:,} | {r['implementation']} "
            f"| {r['peak_rss'] / MIB:,.0f} | {growth} | {bound} | {verdict} "
            f"| {r['seconds']:.1f} | {r['wall']:.1f} | {r['load']:.1f} |"
        )
    return "\n".join(lines), ok


def write_results(records, train_records, chunk_size):
    import keras

    body, ok = table(records)
    training = ""
    if train_records:
        training = f"""
## Training (`remat=True`)

One `train_on_batch` step (first call: compilation included) of a
`PerceiverClassifier` on the same backbone with `remat=True`, in a fresh
process per row. The chunked cross-attention keeps, per chunk, only its
running (max, sum, value) carry for the backward pass (at most 8 heads x
512 latents x (128 + 2) floats per 1,024-key chunk, 2 KiB per input
element), not the latents x heads scores of each key that a plain backward
pass stores (16 KiB per input element here). The growth is linear in M:
see the last column (the float32 input itself is 256 bytes per element).

{train_table(train_records)}
"""
    text = f"""# Memory scaling of the encoder cross-attention

Written by `python benchmarks/memory_scaling.py` on {datetime.date.today()}
({platform.machine()}, {os.cpu_count()} cores, keras {keras.__version__}).

Backbone: 512 latents x 1024 channels, 8 cross-attention heads, 6
self-attention layers with 8 heads, attention implementation "auto"
(key/value chunk size {chunk_size or "automatic"}); one float32 input
`[1, M, 64]`; one forward pass in a fresh process per row. Peak RSS is the
child's VmHWM. Bound: growth over M = 1,000 of at most 2 x input bytes +
512 MiB. "forward" times the `predict_on_batch` call alone (the first
call, so it includes tracing and compilation); "process wall" includes
imports and building the model; "load" is the machine's 1-minute load
average when the forward pass ended (the machine is shared: on 2 cores a
load above 2 slows every row, eager torch most, whose two OpenMP threads
wait on each other at every small op).

{body}

All bounds hold: {"yes" if ok else "NO"}.
{training}"""
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    return text, ok


def converted_table(records):
    """Rows of converted models; growth over the smallest M of the same
    backend and model."""
    lines = [
        "| backend | converter | M | path | peak RSS (MiB) | growth (MiB) "
        "| bound (MiB) | result | command (s) | comparison |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    ok = True
    for r in records:
        base = min((b for b in records if b["backend"] == r["backend"]
                    and b["model"] == r["model"]), key=lambda b: b["size"])
        if r is base:
            growth = bound = verdict = "—"
        else:
            grow = r["peak_rss"] - base["peak_rss"]
            limit = 2 * r["input_bytes"] + WORKING_SET
            ok &= grow <= limit
            growth, bound = f"{grow / MIB:,.0f}", f"{limit / MIB:,.0f}"
            verdict = "pass" if grow <= limit else "FAIL"
        lines.append(
            f"| {r['backend']} | {r['model']} | {r['size']:,} "
            f"| {r['implementation']} | {r['peak_rss'] / MIB:,.0f} "
            f"| {growth} | {bound} | {verdict} | {r['seconds']:.1f} "
            f"| {r['comparison'] or '—'} |"
        )
    return "\n".join(lines), ok


def write_converted_results(records):
    import keras

    body, ok = converted_table(records)
    text = f"""# Memory scaling of converted models

Written by `python benchmarks/memory_scaling.py --models hf deepmind` on
{datetime.date.today()} ({platform.machine()}, {os.cpu_count()} cores, keras
{keras.__version__}); the backbone built directly is in
`memory_scaling.md`.

Each row is one fresh process that writes a checkpoint of the benchmark's
encoder (512 latents x 1024 channels, 8 cross-attention heads, 6
self-attention layers) and runs the converter's command line on it with
`--inputs` / `--save-outputs`, as a user would:

- hf: a transformers `PerceiverModel` (written by our exporter), input
  `[1, M, 64]`; `convert_hf.py` with its default comparison, which runs
  transformers only when its estimated peak fits in the memory available
  (the "comparison" column is what it printed), except in the base row
  (`--no-compare`, so that no row's growth hides transformers' memory);
- deepmind: a DeepMind image classifier with Fourier positions (6 bands:
  29 channels, projected to 256 for the 8 heads), images
  `[1, sqrt(M), sqrt(M), 3]`; `convert_deepmind.py` (no reference to run).

Peak RSS is the child's VmHWM (conversion and saving the preset included:
they do not grow with M). Bound: growth over the smallest M of at most
2 x input bytes + 512 MiB. "command" times `main()` of the command line.

{body}

All bounds hold: {"yes" if ok else "NO"}.
"""
    with open(CONVERTED_RESULTS, "w") as f:
        f.write(text)
    return text, ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backends", nargs="+",
                        default=["tensorflow", "jax", "torch"])
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="input sizes M (default: 1k, 1M; 4M on jax)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="key_value_chunk_size (default: automatic)")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--train", action="store_true",
                        help=argparse.SUPPRESS)  # child: a training step
    parser.add_argument("--train-sizes", nargs="*", type=int,
                        default=TRAIN_SIZES,
                        help="M for the training rows (on "
                        f"{', '.join(TRAIN_BACKENDS)}); none to skip them")
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        default=["backbone"],
                        help="the backbone built directly and/or models "
                        "converted by the command lines")
    parser.add_argument("--model", choices=MODELS, default="backbone",
                        help=argparse.SUPPRESS)  # child: what to run
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--no-compare", action="store_true",
                        help=argparse.SUPPRESS)  # child: hf --no-compare
    parser.add_argument("--no-write", action="store_true",
                        help="print the table without writing the results")
    args = parser.parse_args()
    if args.child is not None:
        if args.model != "backbone":
            return converter_child(args.model, args.child, args.workdir,
                                   compare=not args.no_compare)
        return child(args.child, args.chunk_size, args.train)
    converted = []
    for backend in args.backends:
        for model in args.models:
            if model == "backbone":
                continue
            sizes = args.sizes or MODEL_SIZES[model]
            for size in sorted(set([BASE_SIZE] + list(sizes))):
                # The base row never runs transformers: like for like.
                record = run_child(backend, size, None, args.timeout,
                                   model=model, compare=size != BASE_SIZE)
                converted.append(record)
                print(f"{backend:>10} {model} M={record['size']:>9,}: "
                      f"{record['implementation']}, peak "
                      f"{record['peak_rss'] / MIB:,.0f} MiB, "
                      f"{record['seconds']:.1f} s; "
                      f"{record['comparison']}", flush=True)
    if "backbone" not in args.models:
        text, ok = converted_table(converted)
        if not args.no_write:
            text, ok = write_converted_results(converted)
        print(text)
        return 0 if ok else 1
    records = []
    for backend in args.backends:
        sizes = args.sizes or DEFAULT_SIZES[backend]
        for size in sorted(set([BASE_SIZE] + list(sizes))):
            record = run_child(backend, size, args.chunk_size, args.timeout)
            records.append(record)
            print(f"{backend:>10} M={size:>9,}: {record['implementation']}, "
                  f"peak {record['peak_rss'] / MIB:,.0f} MiB, "
                  f"forward {record['seconds']:.1f} s", flush=True)
    train_records = []
    for backend in TRAIN_BACKENDS if args.train_sizes else []:
        if backend not in args.backends:
            continue
        for size in sorted(set([BASE_SIZE] + list(args.train_sizes))):
            record = run_child(backend, size, args.chunk_size, args.timeout,
                               train=True)
            train_records.append(record)
            print(f"{backend:>10} M={size:>9,}: training step, peak "
                  f"{record['peak_rss'] / MIB:,.0f} MiB, "
                  f"{record['seconds']:.1f} s", flush=True)
    if args.no_write:
        if converted:
            print(converted_table(converted)[0])
        print(table(records)[0])
        if train_records:
            print(train_table(train_records))
        return 0 if table(records)[1] else 1
    text, ok = write_results(records, train_records, args.chunk_size)
    print(text)
    if converted:
        text, converted_ok = write_converted_results(converted)
        print(text)
        ok &= converted_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
