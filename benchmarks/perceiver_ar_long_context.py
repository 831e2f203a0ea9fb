"""Perceiver AR at long contexts: training and generation memory and time.

    python benchmarks/perceiver_ar_long_context.py          # all backends
    python benchmarks/perceiver_ar_long_context.py --backends jax \
        --contexts 4096 32768

Each (backend, context, job) runs in a fresh child process, so its peak
resident set (VmHWM) belongs to that run alone. The model is a byte-level
`PerceiverARCausalLM` (262 ids, 128 channels, 4 heads, 2 self-attention
layers, 256 latents, `max_sequence_length` 32768), batch 1, on random
bytes. Jobs:

- `train`: two `train_on_batch` steps (Adam) on one window of `L` tokens,
  the loss on its last 256 positions, with the cross-attention streamed
  over key chunks and recomputed in the backward pass
  (`attention_implementation="chunked"`, `remat=True`);
- `train_plain`: the same with the plain `[B, H, 256, L]` scores (what
  "auto" picks up to 2**25 scores per example);
- `generate`: greedy `generate()` of 16 tokens after an `L - 16`-token
  prompt (the fixed-shape KV cache, compiled), twice; the second call's
  rate is the steady state.

"added" is the peak minus the resident set after building the model and
before the first step: what the step itself (or generation) needed. The
check, per backend and job: a straight line in the context length fits
"added" within max(64 MiB, 10% of its largest value) at every context
(allocators hand memory out in blocks of tens of MiB); the line's slope is
reported as MiB per 1,000 context tokens.

Writes benchmarks/results/perceiver_ar_long_context.{json,md}.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

from memory_scaling import peak_rss_bytes  # (this folder)
from memory_scaling import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "perceiver_ar_long_context")
MIB = 2**20
CONTEXTS = (4096, 8192, 16384, 32768)
JOBS = ("train", "train_plain", "generate")
BACKENDS = ("jax", "tensorflow", "torch")
LATENTS, NEW_TOKENS = 256, 16
CONFIG = dict(vocabulary_size=262, hidden_dim=128, num_layers=2, num_heads=4,
              max_sequence_length=32768, max_latents=LATENTS)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(job, length):
    import keras
    import numpy as np

    from perceiver_keras import PerceiverARBackbone
    from perceiver_keras import PerceiverARCausalLM

    keras.utils.set_random_seed(0)
    implementation = "plain" if job == "train_plain" else "chunked"
    backbone = PerceiverARBackbone(
        **CONFIG, attention_implementation=implementation,
        remat=job == "train")
    lm = PerceiverARCausalLM(backbone)
    rng = np.random.default_rng(0)
    ids = rng.integers(6, 262, (1, length + 1)).astype("int32")
    record = {"num_params": int(lm.count_params())}
    if job.startswith("train"):
        x = {"token_ids": ids[:, :-1],
             "padding_mask": np.ones((1, length), bool)}
        y = ids[:, -LATENTS:]
        lm.compile(optimizer=keras.optimizers.Adam(1e-3))
        before = rss_bytes()
        times, losses = [], []
        for _ in range(2):
            start = time.perf_counter()
            losses.append(float(np.asarray(
                lm.train_on_batch(x, y)).reshape(-1)[0]))
            times.append(time.perf_counter() - start)
        assert np.isfinite(losses).all(), losses
        record.update(first_seconds=times[0], seconds=times[1],
                      losses=losses)
    else:
        prompt = length - NEW_TOKENS
        mask = np.zeros((1, length), bool)
        mask[:, :prompt] = True
        x = {"token_ids": np.where(mask, ids[:, :length], 0),
             "padding_mask": mask}
        lm.compile(sampler="greedy")
        before = rss_bytes()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            out = lm.generate(x, max_length=length)
            times.append(time.perf_counter() - start)
        generated = np.asarray(out["padding_mask"]).sum() - prompt
        record.update(first_seconds=times[0], seconds=times[1],
                      new_tokens=int(generated),
                      tokens_per_second=float(generated / times[1]))
    record.update(peak_rss=peak_rss_bytes(), before_rss=before,
                  load=os.getloadavg()[0])
    print(json.dumps(record))


def run_child(backend, job, length, timeout):
    return run_json_child(
        backend, [__file__, "--child", job, str(length)],
        dict(backend=backend, job=job, length=length), timeout)


def linear_check(records):
    """Per (backend, job): the least-squares line of "added" against the
    context length, and whether it fits (see the module docstring)."""
    import numpy as np

    groups = {}
    for r in records:
        if "error" not in r:
            groups.setdefault((r["backend"], r["job"]), []).append(r)
    verdicts = {}
    for key, rows in groups.items():
        if len(rows) < 3:
            continue
        lengths = np.array([r["length"] for r in rows], float)
        added = np.array([r["peak_rss"] - r["before_rss"] for r in rows],
                         float) / MIB
        slope, offset = np.polyfit(lengths, added, 1)
        residual = float(np.abs(added - (slope * lengths + offset)).max())
        verdicts[key] = {
            "mib_per_1k_tokens": float(slope * 1000),
            "max_residual_mib": residual,
            "linear": bool(residual <= max(64.0, 0.1 * added.max())),
        }
    return verdicts


def table(records, verdicts):
    rows = ["| backend | job | context | peak RSS (MiB) | added (MiB) | "
            "first call (s) | second call (s) | tokens/s | losses |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['backend']} | {r['job']} | {r['length']:,} | "
                        f"failed: {r['error'].splitlines()[-1][:80]} ||||||")
            continue
        rate = (f"{r['tokens_per_second']:.1f}" if "tokens_per_second" in r
                else "")
        losses = ", ".join(f"{v:.3f}" for v in r.get("losses", ()))
        rows.append(
            f"| {r['backend']} | {r['job']} | {r['length']:,} | "
            f"{r['peak_rss'] / MIB:,.0f} | "
            f"{(r['peak_rss'] - r['before_rss']) / MIB:,.0f} | "
            f"{r['first_seconds']:.1f} | {r['seconds']:.1f} | {rate} | "
            f"{losses} |")
    lines = ["\n".join(rows), "", "\"added\" against the context length, "
             "least-squares line:", "",
             "| backend | job | MiB per 1k tokens | largest distance from "
             "the line (MiB) | linear |", "|---|---|---:|---:|---|"]
    for (backend, job), v in sorted(verdicts.items()):
        lines.append(f"| {backend} | {job} | {v['mib_per_1k_tokens']:.1f} | "
                     f"{v['max_residual_mib']:.0f} | "
                     f"{'yes' if v['linear'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("JOB", "LENGTH"))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--contexts", nargs="+", type=int,
                        default=list(CONTEXTS))
    parser.add_argument("--jobs", nargs="+", default=list(JOBS),
                        choices=JOBS)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], int(args.child[1]))
    records = []
    for backend in args.backends:
        for job in args.jobs:
            for length in sorted(args.contexts):
                record = run_child(backend, job, length, args.timeout)
                print(json.dumps(record), flush=True)
                records.append(record)
    verdicts = linear_check(records)
    header = (
        f"# Perceiver AR at long contexts\n\nWritten by `python "
        f"benchmarks/perceiver_ar_long_context.py {' '.join(argv or sys.argv[1:])}`"
        f" on {datetime.date.today()} ({platform.machine()}, "
        f"{os.cpu_count()} cores). Model and jobs: see the script's "
        f"docstring. One child process per row; load is the 1-minute load "
        f"average at the end of each row (in the JSON).\n\n"
    )
    with open(args.output + ".md", "w") as f:
        f.write(header + table(records, verdicts) + "\n")
    with open(args.output + ".json", "w") as f:
        json.dump({"records": records, "config": CONFIG,
                   "linear": {f"{b} {j}": v for (b, j), v in
                              verdicts.items()}}, f, indent=1)
    print(table(records, verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
