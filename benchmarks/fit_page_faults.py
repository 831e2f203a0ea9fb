"""Small-model `fit` steps and the page faults they take, per allocator setting.

    python benchmarks/fit_page_faults.py                     # ~7 minutes
    python benchmarks/fit_page_faults.py --backends jax --kinds text

The `fit-steps` workload of `compare_transformers.py` (`PerceiverClassifier`
on `recommended_config(kind)`, batch 32, default `compile()`), one child
process per backend and allocator setting (glibc reads its tunables when a
process starts). Each child fits two steps (tracing, compilation), then
one epoch of `--steps` steps: the median step (between the ends of
consecutive steps, as `compare_transformers.py` times them) and the
process's minor page faults per step (`getrusage`). A fault maps one
fresh 4 KiB page, which the kernel zeroes first.

Why: XLA:CPU allocates a compiled step's temporary buffer (94.5 MB for the
`text` classifier's train step) on every call and frees it after; glibc
serves an allocation that large with a fresh `mmap`, so every step faults
in every page it writes again. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
(glibc >= 2.35, with transparent huge pages on `madvise` or `always`) has
malloc ask for 2 MiB pages (18-150x fewer faults per step measured).

Writes `results/fit_page_faults.{md,json}` unless `--no-write`.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from throughput.keras_runner import FIT_SHAPES  # noqa: E402

KINDS = tuple(FIT_SHAPES)
BACKENDS = ("jax", "tensorflow", "torch")
SETTINGS = {
    "glibc default": {},
    "glibc.malloc.hugetlb=1": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}
BATCH = 32


def child(kinds, steps):
    """One JSON line per kind: ms per `fit` step and minor faults per step."""
    import keras

    from throughput.keras_runner import fit_data
    from throughput.keras_runner import fit_model
    from throughput.keras_runner import step_intervals

    for kind in kinds:
        _, model = fit_model(keras, kind)
        x, y = fit_data(kind, steps * BATCH)
        model.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, verbose=0)
        ends, faults = [], []

        class Steps(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ends.append(time.perf_counter())
                faults.append(minor_faults())

        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[Steps()])
        # Between the first and the last step's end: steps only, not the
        # epoch's set-up (TensorFlow builds its dataset there).
        steps_s = step_intervals(ends[0], ends[1:])
        print(json.dumps(dict(
            kind=kind, ms_per_step=1000 * statistics.median(steps_s),
            faults_per_step=(faults[-1] - faults[0]) / (steps - 1),
            load=os.getloadavg()[0])), flush=True)


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run(backend, setting, kinds, steps):
    env = dict(os.environ, KERAS_BACKEND=backend, **SETTINGS[setting])
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--kinds", *kinds,
         "--steps", str(steps)],
        env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in out.stdout.splitlines()
            if line.startswith("{")]
    if out.returncode or len(rows) != len(kinds):
        raise RuntimeError(f"{backend} / {setting} failed:\n{out.stderr}")
    return [dict(row, backend=backend, setting=setting) for row in rows]


def markdown(meta, rows):
    by = {}  # the fastest child per backend, setting and kind
    for r in rows:
        key = r["backend"], r["setting"], r["kind"]
        if key not in by or r["ms_per_step"] < by[key]["ms_per_step"]:
            by[key] = r
    default, other = list(SETTINGS)
    lines = [
        "# Small-model `fit` steps and page faults", "",
        f"Written by `{meta['command']}` on {meta['date']} in "
        f"{meta['wall_s'] / 60:.1f} min ({meta['machine']}, {meta['cores']}"
        f" cores; transparent huge pages: {meta['thp']}; "
        f"TF_ENABLE_ONEDNN_OPTS={meta['onednn']}).", "",
        f"Batch {BATCH}, one epoch of {meta['steps']} steps after two "
        f"warm-up steps, in {meta['repeats']} child processes per backend "
        "and setting (alternating); *ms/step*: the median step of the "
        "fastest child; *faults*: its minor page faults per step. "
        f"*speed-up*: the {default} step time / the {other} one.", "",
        "| backend | kind | ms/step (default) | faults/step (default) "
        f"| ms/step ({other}) | faults/step ({other}) | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend in meta["backends"]:
        for kind in meta["kinds"]:
            a, b = by[backend, default, kind], by[backend, other, kind]
            lines.append(
                f"| {backend} | {kind} | {a['ms_per_step']:.1f} "
                f"| {a['faults_per_step']:,.0f} | {b['ms_per_step']:.1f} "
                f"| {b['faults_per_step']:,.0f} "
                f"| {a['ms_per_step'] / b['ms_per_step']:.2f}x |")
    return "\n".join(lines) + "\n"


def cpu_name():
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS),
                        choices=KINDS)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS),
                        choices=BACKENDS)
    parser.add_argument("--steps", type=int, default=20,
                        help="timed fit steps per kind (default 20)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="child processes per backend and setting; "
                             "the table shows the fastest (default 2)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(args.kinds, args.steps)
    started = time.perf_counter()
    rows = []
    for backend in args.backends:
        for repeat in range(args.repeats):
            for setting in SETTINGS:  # alternating: drifts hit both
                rows += [dict(row, repeat=repeat) for row in
                         run(backend, setting, args.kinds, args.steps)]
                print(json.dumps(rows[-len(args.kinds):]), flush=True)
    meta = dict(
        command="python benchmarks/fit_page_faults.py"
        + "".join(f" {a}" for a in sys.argv[1:]),
        date=str(datetime.date.today()), wall_s=time.perf_counter() - started,
        machine=cpu_name(),
        cores=os.cpu_count(), steps=args.steps, repeats=args.repeats, kinds=args.kinds,
        backends=args.backends,
        thp=read("/sys/kernel/mm/transparent_hugepage/enabled"),
        onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"))
    text = markdown(meta, rows)
    print(text)
    if not args.no_write:
        base = os.path.join(HERE, "results", "fit_page_faults")
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
