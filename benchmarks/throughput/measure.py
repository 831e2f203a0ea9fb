"""What every child process shares: timing, memory, agreement, counting
the model's runs (a compiled model must not run again), results files and
progress lines."""

import gc
import json
import os
import statistics
import time
import traceback

from throughput.workloads import TOLERANCE

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


def time_calls(call, repeats, budget_s, warmup_context=None, model=None):
    """One warm-up call (tracing, compilation, first allocations), then up
    to `repeats` timed calls; stops early when the next call would take the
    timed calls past `budget_s` (at least one is made when repeats > 0).
    With `model` (a Keras layer), also counts how often its `call` ran in
    the warm-up (`traces`) and in the timed calls (`timed_runs`).

    Returns (the warm-up call's output, a record of the times).
    """
    with count_runs(model) as warmup:
        start = time.perf_counter()
        if warmup_context is None:
            output = call()
        else:
            with warmup_context:
                output = call()
        first = time.perf_counter() - start
    times = []
    with count_runs(model) as timed:
        while len(times) < repeats:
            if times and sum(times) + times[-1] > budget_s:
                break
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    record = {
        "first_s": first,
        "times_s": times,
        "median_s": statistics.median(times) if times else None,
        "load": os.getloadavg()[0],
    }
    if model is not None:
        record.update(traces=warmup.runs, timed_runs=timed.runs)
    return output, record


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


def low_precision_agreement(actual, expected):
    """A bfloat16 row against the float32 reference: max|diff|, its scale
    and top-1 agreement along the last axis (informational: bfloat16 keeps
    8 bits of mantissa, so 2e-5 does not apply)."""
    import numpy as np

    actual = np.asarray(actual, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    if actual.shape != expected.shape:
        return {"max_diff": None, "scale": None, "agrees": False,
                "error": f"shape {actual.shape} != {expected.shape}"}
    top1 = (actual.argmax(-1) == expected.argmax(-1)).mean() \
        if actual.ndim else 1.0
    return {"max_diff": float(np.abs(actual - expected).max()),
            "scale": max(1.0, float(np.abs(expected).max())),
            "top1_agreement": float(top1), "agrees": None}


# --- the model must not run again once compiled -------------------------------


class RetraceError(RuntimeError):
    """A timed call ran the model's Python code: eager execution or a new
    trace every call, so the row would time Keras' slow path."""


class count_runs:
    """Counts runs of `layer`'s `call` (eager runs, traces and symbolic
    builds alike) while inside: `counter.runs`.

    Patches the layer's class (Keras calls `self.call`), so nested copies of
    the same class count too; restores it on exit."""

    def __init__(self, layer):
        self.cls = None if layer is None else type(layer)
        self.runs = 0

    def __enter__(self):
        if self.cls is None:
            return self
        self.own = "call" in vars(self.cls)
        original = self.original = self.cls.call
        counter = self

        def counted(layer, *args, **kwargs):
            counter.runs += 1
            return original(layer, *args, **kwargs)

        self.cls.call = counted
        return self

    def __exit__(self, *exc):
        if self.cls is None:
            return
        if self.own:
            self.cls.call = self.original
        else:
            del self.cls.call


def allowed_runs(backend, calls):
    """Runs of the model's `call` that `calls` compiled calls may make:
    none on JAX and TensorFlow (the traced function is reused), one per call
    on torch (eager: not checked, n/a)."""
    return calls if backend == "torch" else 0


def check_runs(backend, runs, calls, what):
    """Raises RetraceError when `calls` timed calls ran the model `runs`
    times, more than a compiled model may."""
    allowed = allowed_runs(backend, calls)
    if runs > allowed:
        raise RetraceError(
            f"{what} on {backend}: the model's call ran {runs} times in "
            f"{calls} timed calls (at most {allowed}): it runs eagerly or is "
            "re-traced every call, so this row would time the slow path.")


# --- child results ---------------------------------------------------------------


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



def describe_row(framework, workload, row):
    if "fit" in row:
        key = row["fit"]
    elif "size" in row:
        key = f"M={row['size']:,}"
    else:
        key = f"batch {row['batch']}"
    if row.get("dtype", "float32") != "float32" and "fit" not in row:
        key += f" {row['dtype']}"
    if row.get("note") or row.get("first_s") is None:
        return f"{framework} {workload} {key}: {row.get('note', 'not run')}"
    median = row.get("median_s")
    timing = (f"median {median:.3f} s of {len(row['times_s'])}"
              if median is not None else "reference only")
    check = ""
    if row.get("max_diff") is not None:
        verdict = ("ok" if row["agrees"] else "DIFFERS") \
            if row.get("agrees") is not None else (
                f"top-1 {100 * row.get('top1_agreement', 0):.0f}%")
        check = f", max|diff| {row['max_diff']:.2g} ({verdict})"
    if "timed_runs" in row:
        check += (f", model ran {row['traces']}x warm-up / "
                  f"{row['timed_runs']}x timed")
    return (f"{framework} {workload} {key}: warm-up {row['first_s']:.2f} s, "
            f"{timing}{check}")


def reference_path(job, key, suffix=".npy"):
    return os.path.join(job["workdir"], f"{job['workload']}-{key}{suffix}")


