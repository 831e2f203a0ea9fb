"""Issue 15's command, run as a user would, on every backend.

    python benchmarks/convert_long_input.py               # ~10-15 minutes
    python benchmarks/convert_long_input.py --backends torch --sizes 1000 1000000

A transformers `PerceiverModel` (512 latents x 1024 channels, 8
cross-attention heads, 64 input channels, 6 self-attention layers with 8
heads, transformers' own initialisation) is written with `save_pretrained`.
Then, for each backend, a fresh process runs exactly

    python conversion/convert_hf.py DIR --output PRESET --inputs x.npz \\
        --save-outputs y.npz

with `x.npz` holding `inputs` of shape `[1, M, 64]` (float32). transformers
and torch are installed, so the command decides itself whether the
comparison fits (at M = 1,000 it runs and prints max|diff|; at M = 10^6 it
needs about 31.5 GiB and is skipped with one line).

Each row's peak resident set is the child's `ru_maxrss` (from `wait4`, so
it is that command's peak alone). The bound is the long-input issue's:
from M = 1,000 to 10^6 the peak grows by at most 2 x the input's bytes +
512 MiB. Its base is an extra M = 1,000 run with `--no-compare`, so that
transformers' own memory in the compared run does not hide any growth.
A row passes when the command exits 0, the preset's `config.json` and the
outputs were written, the comparison line says what it did and the bound
holds. The outputs at M = 10^6 (no transformers reference fits) are
checked across backends instead.

Writes `results/convert_long_input.json` (every measurement) and
`results/convert_long_input.md`; exits non-zero if any check fails.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "convert_long_input")
MIB = 2**20
CHANNELS = 64
BASE_SIZE = 1000
WORKING_SET = 512 * MIB
BACKENDS = ("tensorflow", "jax", "torch")
SIZES = (BASE_SIZE, 1_000_000)
# The cross-backend check of outputs that transformers cannot produce here.
TOLERANCE = 2e-5


def write_transformers_model(directory):
    """The issue's model, saved by transformers itself."""
    import torch
    from transformers import PerceiverConfig, PerceiverModel

    torch.manual_seed(0)
    config = PerceiverConfig(
        num_latents=512, d_latents=1024, d_model=CHANNELS,
        num_cross_attention_heads=8, num_blocks=1,
        num_self_attends_per_block=6, num_self_attention_heads=8,
    )
    PerceiverModel(config).save_pretrained(directory)
    return config.to_dict()


def run_command(backend, directory, inputs, workdir, name, extra=()):
    """Runs convert_hf.py in a fresh process; its peak RSS and output."""
    preset = os.path.join(workdir, f"preset-{name}")
    outputs = os.path.join(workdir, f"y-{name}.npz")
    command = [sys.executable, os.path.join(ROOT, "conversion", "convert_hf.py"),
               directory, "--output", preset, "--inputs", inputs,
               "--save-outputs", outputs, *extra]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   [ROOT, os.environ.get("PYTHONPATH", "")]))
    log = os.path.join(workdir, f"log-{name}.txt")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as f:
        process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                                   env=env, cwd=workdir)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    with open(log) as f:
        printed = f.read()
    lines = printed.splitlines()
    comparison = next((l for l in lines if "comparison" in l
                       or l.startswith("against")), "")
    if comparison.startswith("against"):
        index = lines.index(comparison)
        comparison = " ".join(lines[index:index + 2]).strip()
    record = dict(
        backend=backend, name=name, command=" ".join(
            ["python conversion/convert_hf.py", "DIR", "--output", "PRESET",
             "--inputs", "x.npz", "--save-outputs", "y.npz", *extra]),
        exit_status=os.waitstatus_to_exitcode(status),
        peak_rss=usage.ru_maxrss * 1024, seconds=seconds,
        load_before=load_before, load_after=os.getloadavg()[0],
        preset_written=os.path.isfile(os.path.join(preset, "config.json")),
        outputs_written=os.path.isfile(outputs), comparison=comparison,
        log_tail=lines[-12:],
    )
    if record["outputs_written"]:
        with np.load(outputs) as saved:
            record["output_shapes"] = {k: list(v.shape)
                                       for k, v in saved.items()}
    return record, outputs


def table(records):
    lines = [
        "| backend | M | command | exit | preset + outputs written "
        "| peak RSS (MiB) | growth vs M=1k no-compare (MiB) | bound (MiB) "
        "| result | wall (s) | load (1-min, before/after) | comparison |",
        "|---|---:|---|---:|---|---:|---:|---:|---|---:|---|---|",
    ]
    for r in records:
        growth = bound = "—"
        if r.get("growth") is not None:
            growth = f"{r['growth'] / MIB:,.0f}"
            bound = f"{r['bound'] / MIB:,.0f}"
        flags = " ".join(a for a in r["command"].split() if a.startswith("--")
                         and a not in ("--output", "--inputs",
                                       "--save-outputs"))
        lines.append(
            f"| {r['backend']} | {r['size']:,} | {flags or 'as in the issue'} "
            f"| {r['exit_status']} "
            f"| {'yes' if r['preset_written'] and r['outputs_written'] else 'NO'}"
            f" | {r['peak_rss'] / MIB:,.0f} | {growth} | {bound} "
            f"| {'pass' if r['ok'] else 'FAIL'} | {r['seconds']:.0f} "
            f"| {r['load_before']:.1f} / {r['load_after']:.1f} "
            f"| {r['comparison'] or '—'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        default=list(BACKENDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES),
                        help="input lengths M (the first is the base)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    base_size, sizes = args.sizes[0], args.sizes
    started = datetime.datetime.now(datetime.timezone.utc)
    records, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="convert_long_input-") as work:
        directory = os.path.join(work, "hf")
        config = write_transformers_model(directory)
        rng = np.random.default_rng(0)
        inputs = {}
        for size in sizes:
            inputs[size] = os.path.join(work, f"x{size}.npz")
            np.savez(inputs[size], inputs=rng.standard_normal(
                (1, size, CHANNELS), dtype=np.float32))
        for backend in args.backends:
            runs = [(base_size, "no-compare", ["--no-compare"])] + [
                (size, "default", []) for size in sizes]
            base = None
            for size, kind, extra in runs:
                name = f"{backend}-{size}-{kind}"
                print(f"{name} ...", flush=True)
                record, path = run_command(backend, directory, inputs[size],
                                           work, name, extra)
                record.update(size=size, input_bytes=size * CHANNELS * 4)
                ok = (record["exit_status"] == 0 and record["preset_written"]
                      and record["outputs_written"] and
                      record["output_shapes"].get("last_hidden_state")
                      == [1, 512, 1024])
                if kind == "no-compare":
                    base = record
                    ok = ok and "--no-compare" in record["comparison"]
                elif size == base_size:
                    # transformers fits: it must have run and agreed.
                    ok = ok and record["comparison"].startswith("against") \
                        and record["comparison"].endswith("ok")
                else:
                    growth = record["peak_rss"] - base["peak_rss"]
                    bound = 2 * record["input_bytes"] + WORKING_SET
                    record.update(growth=growth, bound=bound)
                    ok = ok and growth <= bound and (
                        "skipped" in record["comparison"])
                    if record["outputs_written"]:
                        with np.load(path) as saved:
                            outputs[backend] = saved["last_hidden_state"]
                record["ok"] = bool(ok)
                print(f"  exit {record['exit_status']}, peak "
                      f"{record['peak_rss'] / MIB:,.0f} MiB, "
                      f"{record['seconds']:.0f} s, "
                      f"{'ok' if ok else 'FAIL'}: {record['comparison']}",
                      flush=True)
                records.append(record)
    # No reference fits at the largest M: the backends must agree.
    agreement = {}
    if len(outputs) > 1:
        first = sorted(outputs)[0]
        ref = outputs[first]
        bound = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        for backend in sorted(outputs):
            if backend != first:
                diff = float(np.abs(outputs[backend] - ref).max())
                agreement[f"{backend} vs {first}"] = dict(
                    max_abs_diff=diff, bound=bound, ok=diff <= bound)
    ok = all(r["ok"] for r in records) and all(
        a["ok"] for a in agreement.values())
    import keras

    result = dict(
        issue=15, started=started.isoformat(timespec="seconds"),
        machine=dict(platform=platform.machine(), cores=os.cpu_count(),
                     python=platform.python_version(),
                     keras=keras.__version__),
        transformers_config={k: config[k] for k in (
            "num_latents", "d_latents", "d_model",
            "num_cross_attention_heads", "num_self_attends_per_block",
            "num_self_attention_heads")},
        bound="growth from the M=1,000 --no-compare run <= 2 x input bytes"
              " + 512 MiB", records=records,
        agreement_at_largest_size=agreement, all_ok=ok,
    )
    body = table(records)
    agree = "\n".join(
        f"- {name}: max|diff| = {a['max_abs_diff']:.3g} (bound "
        f"{a['bound']:.3g}) {'ok' if a['ok'] else 'FAIL'}"
        for name, a in agreement.items()) or "- (one backend only)"
    text = f"""# Issue 15's command on every backend

Written by `python benchmarks/convert_long_input.py` on
{started:%Y-%m-%d %H:%M} UTC ({platform.machine()}, {os.cpu_count()} cores,
keras {keras.__version__}, transformers and torch installed). Raw numbers:
`convert_long_input.json`.

A transformers `PerceiverModel` (512 latents x 1024 channels, 8
cross-attention heads, 64 input channels, 6 self-attention layers, saved by
`save_pretrained`) converted and run by
`python conversion/convert_hf.py DIR --output PRESET --inputs x.npz
--save-outputs y.npz` on float32 inputs `[1, M, 64]`, one fresh process
per row. Peak RSS is the command's `ru_maxrss`; growth is over the
M = 1,000 run with `--no-compare` (transformers not run); bound: 2 x input
bytes + 512 MiB. Times are noisy: the machine is shared with other
engineers' test runs (load column); memory is not affected by load.

{body}

At M = 10^6 no transformers reference fits, so the backends' outputs
(`last_hidden_state`, 512 x 1024) are compared with each other:

{agree}

All checks pass: {"yes" if ok else "NO"}.
"""
    print(text)
    if not args.no_write:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(RESULTS + ".md", "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
