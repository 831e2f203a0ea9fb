"""Where a small-model training step's time goes on the torch backend.

    KERAS_BACKEND=torch python benchmarks/profile_fit_step.py --kind image
    KERAS_BACKEND=torch python benchmarks/profile_fit_step.py --threads 1 2

The `fit-steps` workload's model (`PerceiverClassifier` on
`recommended_config(kind)`, batch 32, default compile). For each thread
count: the median `train_on_batch` step after two warm-up steps, the
number of aten operators one step dispatches, and the mean time per
operator; then a `torch.profiler` table of one step (operators by self CPU
time). Eager torch dispatches every small op of the model from Python, so
the step time is about (number of ops) x (per-op overhead) once the matmuls
are small; with two OpenMP threads every parallel op also waits at a
barrier, and one descheduled thread on a loaded machine stalls the step.
Prints JSON lines and the profiler table; writes nothing.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(kind, batch_size):
    import keras

    from throughput.keras_runner import fit_data
    from throughput.keras_runner import fit_model

    _, model = fit_model(keras, kind)
    x, y = fit_data(kind, batch_size)
    return model, x, y


def count_ops(step):
    """aten operators one call of `step` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.count += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        step()
    return Counter.count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="image",
                        choices=["image", "sequence", "point_set", "text"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    import keras
    import torch

    if keras.backend.backend() != "torch":
        parser.error("run with KERAS_BACKEND=torch")
    model, x, y = build(args.kind, args.batch_size)

    def step():
        return model.train_on_batch(x, y)

    for _ in range(2):
        step()
    ops = count_ops(step)
    for threads in args.threads:
        torch.set_num_threads(threads)
        step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps(dict(
            kind=args.kind, threads=threads, batch=args.batch_size,
            median_step_s=median, aten_ops_per_step=ops,
            us_per_op=1e6 * median / ops, params=model.count_params(),
            load=os.getloadavg()[0])), flush=True)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total",
                                    row_limit=args.rows))


if __name__ == "__main__":
    main()
