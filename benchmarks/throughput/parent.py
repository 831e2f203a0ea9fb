"""The parent process: one child per framework (a fresh interpreter, so
KERAS_BACKEND and the peak RSS belong to it), their progress lines shown
as they come, their results collected."""

import json
import os
import subprocess
import sys
import threading
import time

from throughput.measure import PROGRESS
from throughput.measure import write_json_atomically
from throughput.workloads import KERAS_BACKENDS

# The command line both the parent and its children run.
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "compare_transformers.py")


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
            [sys.executable, SCRIPT, "--child", job_path],
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
    # Each child imports only its own side (transformers' child never
    # imports Keras, a Keras child never imports transformers).
    if job["role"] == "machine":
        from throughput.machine import machine_child

        write_json_atomically(machine_child(job), job["out"])
    elif job["role"] == "transformers":
        from throughput.transformers_runner import transformers_child

        transformers_child(job)
    else:
        from throughput.keras_runner import keras_child

        keras_child(job)
    return 0


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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


