"""The command line of `benchmarks/compare_transformers.py`."""

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from throughput.parent import child_main
from throughput.parent import log
from throughput.parent import run_child
from throughput.parent import run_frameworks
from throughput.report import markdown
from throughput.report import versions
from throughput.report import write_plot
from throughput.workloads import FRAMEWORKS
from throughput.workloads import WORKLOADS
from throughput.workloads import workload_specs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(HERE, "results")
RESULT_NAME = "compare_transformers"
DESCRIPTION = ("transformers' PyTorch Perceiver vs perceiver_keras on torch, "
               "JAX, TensorFlow (see benchmarks/README.md).")


def failed_checks(all_results):
    """"workload framework" of every workload that raised RetraceError (a
    model that ran eagerly or was re-traced in timed calls)."""
    return [f"{name} {framework}"
            for name, results in all_results.items()
            for framework, result in results.items()
            if "RetraceError" in result.get("error", "")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=DESCRIPTION,
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
    parser.add_argument("--dtypes", nargs="+",
                        choices=["float32", "bfloat16"],
                        default=["float32", "bfloat16"],
                        help="row dtypes (default both; fit-steps' bfloat16 "
                             "rows are mixed_bfloat16)")
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
        if "dtypes" in spec:
            # float32 always runs: it is every row's reference.
            spec["dtypes"] = [d for d in spec["dtypes"] if d == "float32"
                              or "bfloat16" in args.dtypes]
    workdir = tempfile.mkdtemp(prefix="compare_transformers-")
    try:
        dtypes = ["float32"] + [d for d in args.dtypes if d != "float32"]
        log(f"measuring the matmul rate ({', '.join(dtypes)})")
        # n x n: repeats (4096 takes ~2 s per product on 2 cores).
        sizes = {1024: 5} if args.quick else {2048: 5, 4096: 3}
        machine_job = dict(threads=args.threads, matmul_sizes=sizes,
                           dtypes=dtypes)
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
    # A row that ran eagerly or re-traced timed the wrong thing: say so.
    failed = failed_checks(all_results)
    status = 0
    if failed:
        log("FAILED (the model ran eagerly or was re-traced in timed calls):"
            " " + ", ".join(failed))
        status = 1
    if args.no_write:
        return status
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
    return status
