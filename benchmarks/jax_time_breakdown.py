"""Where a JAX call's time goes: matrix products against the rest.

    KERAS_BACKEND=jax python benchmarks/jax_time_breakdown.py              # ~3 min
    KERAS_BACKEND=jax python benchmarks/jax_time_breakdown.py --workloads language-mlm
    KERAS_BACKEND=jax python benchmarks/jax_time_breakdown.py --workloads --fit text

For a workload of `compare_transformers.py` (the same transformers
checkpoint, loaded with `PerceiverTask.from_preset`), it times the compiled
`predict_on_batch` (median of `--repeats` after a warm-up), then lists the
`dot_general`s of the model's jaxpr (sub-jaxprs included) and times each
distinct product alone under `jax.jit` on random operands of its shapes and
dtypes (median of `--repeats`). The sum over products, times their count,
is the call's *product time*; the rest of the call (softmax, LayerNorm,
GELU, Fourier features, copies) is what `% of limit` loses beyond the
products' own rate. The limit is a float32 n x n `jax.jit` matmul, as in
`compare_transformers.py`. Prints one JSON line per workload; writes
`results/jax_time_breakdown.{md,json}` unless `--no-write`.

`--fit KIND...` does the same for the `fit-steps` workload's training step
(`PerceiverClassifier` on `recommended_config(kind)`, batch 32): the median
`fit` step, the median call of Keras' compiled train function alone (the
same `jax.jit` step on device arrays, state fed back: what `fit` adds on
top is its Python loop, data slicing and callbacks), and the products of
`train_step`'s jaxpr (forward, backward and optimizer).
"""

import argparse
import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(call, repeats):
    call()  # compile, allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products_of(jaxpr):
    """`(lhs aval, rhs aval, params)` of every `dot_general`, sub-jaxprs
    (jit, loops, custom gradients) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append((eqn.invars[0].aval, eqn.invars[1].aval,
                          eqn.params))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found += products_of(sub)
    return found


def product_flops(lhs, rhs, dimension_numbers):
    """2 x (every lhs element) x (rhs's free axes)."""
    (_, rhs_contract), (_, rhs_batch) = dimension_numbers
    rhs_free = [n for axis, n in enumerate(rhs.shape)
                if axis not in rhs_contract and axis not in rhs_batch]
    return 2 * math.prod(lhs.shape) * math.prod(rhs_free)


def time_products(products, repeats):
    """Seconds and FLOPs of all `products` (each distinct one timed once),
    and a row per distinct product, slowest total first."""
    import jax
    import numpy as np

    distinct = collections.OrderedDict()
    for lhs, rhs, params in products:
        key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype),
               repr(params["dimension_numbers"]),
               str(params.get("preferred_element_type")))
        distinct.setdefault(key, [lhs, rhs, params, 0])[3] += 1
    rng = np.random.default_rng(0)
    total_s, total_flops, rows = 0.0, 0, []
    for lhs, rhs, params, count in distinct.values():
        a = jax.numpy.asarray(rng.normal(size=lhs.shape), lhs.dtype)
        b = jax.numpy.asarray(rng.normal(size=rhs.shape), rhs.dtype)
        f = jax.jit(lambda x, y, p=params: jax.lax.dot_general(
            x, y, p["dimension_numbers"],
            preferred_element_type=p.get("preferred_element_type")))
        seconds = median_time(lambda: f(a, b).block_until_ready(), repeats)
        flops = product_flops(lhs, rhs, params["dimension_numbers"])
        total_s += count * seconds
        total_flops += count * flops
        rows.append(dict(lhs=list(lhs.shape), rhs=list(rhs.shape),
                         dtype=str(lhs.dtype), count=count,
                         ms=seconds * 1e3, gflops=flops / seconds / 1e9))
    rows.sort(key=lambda r: -r["count"] * r["ms"])
    return total_s, total_flops, rows


def matmul_limit(repeats, n=2048):
    import jax
    import numpy as np

    a = jax.numpy.asarray(np.random.default_rng(0).normal(size=(n, n)),
                          "float32")
    f = jax.jit(lambda x: x @ x)
    seconds = median_time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / seconds / 1e9


def breakdown(name, batch, repeats, directory):
    import jax
    import torch

    from throughput.keras_runner import load_keras_model
    from throughput.transformers_runner import write_checkpoint
    from throughput.workloads import WORKLOADS
    from throughput.workloads import keras_inputs

    spec = WORKLOADS[name]
    checkpoint = os.path.join(directory, name)
    write_checkpoint(spec, checkpoint, torch)
    model, _ = load_keras_model(spec, checkpoint)
    x = keras_inputs(spec, batch)
    call_s = median_time(lambda: model.predict_on_batch(x), repeats)

    weights = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]
    jaxpr = jax.make_jaxpr(
        lambda w, o, inputs: model.stateless_call(w, o, inputs)[0]
    )(weights, others, x)
    products = products_of(jaxpr.jaxpr)
    product_s, flops, rows = time_products(products, repeats)
    return dict(
        workload=name, batch=batch, call_ms=call_s * 1e3,
        products=len(products), product_ms=product_s * 1e3,
        product_share=product_s / call_s, product_gflops=flops / product_s / 1e9,
        call_gflops=flops / call_s / 1e9, slowest_products=rows[:8],
        load=os.getloadavg()[0],
    )


def fit_breakdown(kind, repeats, batch_size=32, steps=12):
    import jax
    import keras

    from throughput.keras_runner import fit_data
    from throughput.keras_runner import fit_model
    from throughput.keras_runner import measure_fit

    fit_s = measure_fit(keras, kind, steps, batch_size)["median_s"]
    _, model = fit_model(keras, kind)
    x, y = fit_data(kind, batch_size)
    model.train_on_batch(x, y)  # builds and compiles the train function
    batch = (jax.numpy.asarray(x), jax.numpy.asarray(y))
    state = model._get_jax_state(
        trainable_variables=True, non_trainable_variables=True,
        optimizer_variables=True, metrics_variables=True)
    jaxpr = jax.make_jaxpr(model.train_step)(state, batch)

    def step():  # the state is donated: feed back what the step returns
        nonlocal state
        logs, state = model.train_function(state, iter([batch]))
        jax.block_until_ready(logs)

    step_s = median_time(step, repeats)
    products = products_of(jaxpr.jaxpr)
    product_s, flops, rows = time_products(products, repeats)
    return dict(
        workload=f"fit {kind}", batch=batch_size, fit_step_ms=fit_s * 1e3,
        call_ms=step_s * 1e3, products=len(products),
        product_ms=product_s * 1e3, product_share=product_s / step_s,
        product_gflops=flops / product_s / 1e9,
        call_gflops=flops / step_s / 1e9, slowest_products=rows[:8],
        load=os.getloadavg()[0],
    )


def cpu_description():
    """The CPU's model name and its bfloat16 matrix instructions, if any."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = set(info.split())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return (f"{name}, {os.cpu_count()} cores, bfloat16 instructions: "
            f"{', '.join(bf16) or 'none'}")


def table(limit, records, machine):
    lines = [
        "# Where a JAX call's time goes",
        "",
        f"{machine}, load {records[0]['load']:.1f} at the first row.",
        "",
        f"`benchmarks/jax_time_breakdown.py`; float32; `jax.jit` float32 "
        f"2048² matmul: {limit:.0f} GFLOP/s (the limit). *Products*: every "
        "`dot_general` of the model's jaxpr timed alone on operands of its "
        "shapes; *rest*: the call minus the products.",
    ]
    calls = [r for r in records if "fit_step_ms" not in r]
    if calls:
        lines += [
            "",
            "| workload | batch | call (ms) | products | product time (ms) "
            "| share of the call | products' rate (GFLOP/s) | call's rate "
            "(GFLOP/s) | call's % of limit | rest (ms) | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in calls:
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r['call_ms']:.0f} | "
            f"{r['products']} | {r['product_ms']:.0f} | "
            f"{100 * r['product_share']:.0f} % | {r['product_gflops']:.0f} | "
            f"{r['call_gflops']:.0f} | {100 * r['call_gflops'] / limit:.0f} % "
            f"| {r['call_ms'] - r['product_ms']:.0f} | {r['load']:.1f} |")
    fits = [r for r in records if "fit_step_ms" in r]
    if fits:
        lines += [
            "", "Training steps (`--fit`): *compiled step* is Keras' "
            "compiled train function alone; *fit step* the median step of "
            "`fit` (its loop, data slicing and callbacks on top).", "",
            "| workload | batch | fit step (ms) | compiled step (ms) | "
            "products | product time (ms) | share of the compiled step | "
            "rest of the compiled step (ms) | fit's own (ms) | products' "
            "rate (GFLOP/s) | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in fits:
            lines.append(
                f"| {r['workload']} | {r['batch']} | {r['fit_step_ms']:.1f} "
                f"| {r['call_ms']:.1f} | {r['products']} | "
                f"{r['product_ms']:.1f} | {100 * r['product_share']:.0f} % | "
                f"{r['call_ms'] - r['product_ms']:.1f} | "
                f"{r['fit_step_ms'] - r['call_ms']:.1f} | "
                f"{r['product_gflops']:.0f} | {r['load']:.1f} |")
    lines += ["", "Slowest products (count x time):", ""]
    for r in records:
        lines.append(f"- {r['workload']} batch {r['batch']}: " + "; ".join(
            f"{p['count']} x {p['lhs']}·{p['rhs']} {p['ms']:.3f} ms "
            f"({p['gflops']:.0f} GFLOP/s)" for p in r["slowest_products"][:4]))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", nargs="*",
                        default=["vision-fourier", "language-mlm"])
    parser.add_argument("--fit", nargs="*", default=[],
                        help="recommended_config kinds whose fit step to "
                             "break down")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import keras

    if keras.backend.backend() != "jax":
        sys.exit("run with KERAS_BACKEND=jax")
    limit = matmul_limit(args.repeats)
    records = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.workloads:
            record = breakdown(name, 1, args.repeats, directory)
            print(json.dumps(dict(record, limit_gflops=limit)), flush=True)
            records.append(record)
    for kind in args.fit:
        record = fit_breakdown(kind, args.repeats)
        print(json.dumps(dict(record, limit_gflops=limit)), flush=True)
        records.append(record)
    if not args.no_write:
        machine = f"{time.strftime('%Y-%m-%d')}, {cpu_description()}"
        with open(os.path.join(RESULTS, "jax_time_breakdown.json"), "w") as f:
            json.dump(dict(machine=machine, limit_gflops=limit,
                           records=records), f, indent=1)
        with open(os.path.join(RESULTS, "jax_time_breakdown.md"), "w") as f:
            f.write(table(limit, records, machine))


if __name__ == "__main__":
    main()
