"""The results as Markdown tables and a plot (from the children's rows)."""

import importlib.metadata

from throughput.workloads import FRAMEWORKS
from throughput.workloads import MIB
from throughput.workloads import TOLERANCE
from throughput.workloads import forward_flops
from throughput.workloads import training_step_flops

FLOAT32 = "float32"


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
    """{framework: {(key value, dtype): row}} of the frameworks that ran."""
    table = {}
    for framework, result in results.items():
        if "rows" in result:
            table[framework] = {(row[key], row.get("dtype", FLOAT32)): row
                                for row in result["rows"]}
    return table


def limit_for(limit, dtype):
    """The matmul limit (GFLOP/s) of a dtype; `limit` is {dtype: rate} (a
    number in results written before bfloat16 rows)."""
    if isinstance(limit, dict):
        return limit.get(dtype) or limit.get(FLOAT32)
    return limit


def agreement_cell(row, framework):
    if framework == "transformers":
        return ("reference" if row.get("dtype", FLOAT32) == FLOAT32
                else "—"), "—"
    if row.get("max_diff") is None:
        return "—", row.get("error", "no reference")
    if row.get("agrees") is None:  # bfloat16 against float32: measured
        top1 = row.get("top1_agreement")
        verdict = "n/a (bfloat16)" if top1 is None else (
            f"top-1 {100 * top1:.0f}%")
        return f"{row['max_diff']:.1e} / {row['scale']:.3g}", verdict
    verdict = "yes" if row["agrees"] else "**NO**"
    where = row.get("reference", "")
    if where and not where.startswith("transformers"):
        verdict += f" (vs {where})"
    return f"{row['max_diff']:.1e} / {row['scale']:.3g}", verdict


def execution_cell(framework, row):
    if framework == "transformers":
        mode = "eager, no_grad" if "first_loss" not in row else "eager"
    else:
        mode = row.get("execution", "?")
        if row.get("policy", FLOAT32) != FLOAT32:
            mode += f", {row['policy']}"
        if "timed_runs" in row:
            mode += (f"; model ran {row['traces']}x in warm-up, "
                     f"{row['timed_runs']}x timed")
    return mode


def speed_cells(row, flops, limit, reference_row, float32_row=None):
    """warm-up, median, runs, vs transformers, [vs our float32,] GFLOP/s,
    % of the row dtype's matmul limit."""
    median = row.get("median_s")
    gflops = flops / median / 1e9 if median else None
    reference_median = reference_row.get("median_s") if reference_row else None
    limit = limit_for(limit, row.get("dtype", FLOAT32))
    cells = [
        fmt(row.get("first_s"), 2),
        fmt(median, 3),
        str(len(row.get("times_s", []))),
        fmt(ratio(reference_median, median), 2, "x"),
    ]
    if float32_row is not None or row.get("dtype", FLOAT32) != FLOAT32:
        cells.append(fmt(ratio((float32_row or {}).get("median_s"), median),
                         2, "x"))
    else:
        cells.append("—")
    return cells + [
        fmt(gflops, 1),
        fmt(100 * gflops / limit if gflops and limit else None, 0, "%"),
    ]


def error_rows(results, columns):
    lines = []
    for framework, result in results.items():
        if "error" in result:
            message = result["error"].strip().splitlines()
            cells = [framework, f"FAILED: {message[-1][:150] if message else ''}"]
            lines.append("| " + " | ".join(cells + [""] * (columns - 2)) + " |")
    return lines


def dtypes_of(spec):
    return spec.get("dtypes", [FLOAT32])


def workloads_of(specs, all_results, kind):
    """`(name, spec, results)` of the `kind` workloads, in run order."""
    for name, results in all_results.items():
        if specs[name]["kind"] == kind:
            yield name, specs[name], results


def workload_table(specs, all_results, kind, header, alignment, cells):
    """The markdown table of the `kind` workloads: `header`, `alignment`,
    then `cells(name, spec, batch, dtype, framework, row, reference_row,
    float32_row)` for every measured row (see `measured_rows`) and a row
    for every framework that failed."""
    columns = header.count("|") - 1
    lines = [header, alignment]
    for name, spec, results in workloads_of(specs, all_results, kind):
        for measured in measured_rows(spec, results):
            lines.append("| " + " | ".join(cells(name, spec, *measured)) + " |")
        lines += error_rows(results, columns)
    return "\n".join(lines)


def inference_table(specs, all_results, limit):
    header = ("| workload | batch | dtype | framework | execution "
              "| load (s) | warm-up (s) | median (s) | runs "
              "| throughput vs transformers (same dtype) | vs own float32 "
              "| GFLOP/s | % of limit | peak RSS (MiB) "
              "| max abs diff / scale (vs transformers float32) | agrees "
              "| load avg |")
    alignment = ("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:"
                 "|---:|---:|---:|---:|---|---:|")

    def cells(name, spec, batch, dtype, framework, row, reference_row,
              float32_row):
        flops = batch * forward_flops(spec)
        diff, verdict = agreement_cell(row, framework)
        return [
            name, str(batch), dtype, framework,
            execution_cell(framework, row),
            fmt(row["load_s"], 1),
            *speed_cells(row, flops, limit, reference_row, float32_row),
            fmt(row["peak_rss"] / MIB, 0), diff, verdict,
            fmt(row["load"], 1),
        ]

    return workload_table(specs, all_results, "inference", header, alignment,
                          cells)


def measured_rows(spec, results):
    """`(batch, dtype, framework, row, transformers' row, the framework's
    float32 row or None)` for every measured row of a workload, in table
    order."""
    table = rows_by_key(results, "batch")
    for dtype in dtypes_of(spec):
        for batch in spec["batches"]:
            reference_row = table.get("transformers", {}).get((batch, dtype))
            for framework, rows in table.items():
                row = rows.get((batch, dtype))
                if row is None:
                    continue
                float32_row = (rows.get((batch, FLOAT32))
                               if dtype != FLOAT32 else None)
                yield batch, dtype, framework, row, reference_row, float32_row


def training_table(specs, all_results, limit):
    header = ("| workload | batch | dtype | framework | execution "
              "| warm-up step (s) | median step (s) | runs "
              "| throughput vs transformers (same dtype) | vs own float32 "
              "| GFLOP/s | % of limit | peak RSS (MiB) | first-step loss "
              "| loss diff / scale (vs transformers float32) | agrees "
              "| loss after last step | load avg |")
    alignment = ("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:"
                 "|---:|---:|---:|---:|---|---:|---:|")

    def cells(name, spec, batch, dtype, framework, row, reference_row,
              float32_row):
        flops = training_step_flops(spec, batch)
        diff, verdict = agreement_cell(row, framework)
        return [
            name, str(batch), dtype, framework,
            execution_cell(framework, row),
            *speed_cells(row, flops, limit, reference_row, float32_row),
            fmt(row["peak_rss"] / MIB, 0),
            fmt(row["first_loss"], 5), diff, verdict,
            f"{row['last_loss']:.5f} ({row['steps']} steps)",
            fmt(row["load"], 1),
        ]

    return workload_table(specs, all_results, "training", header, alignment,
                          cells)


def scaling_table(spec, results, limit):
    header = ("| M | framework | attention path | execution | warm-up (s) "
              "| median (s) | runs | throughput vs transformers | — "
              "| GFLOP/s | % of limit | peak RSS (MiB) "
              "| growth during call (MiB) | max abs diff / scale | agrees "
              "| note |")
    lines = [header, "|---:|---|---|---|---:|---:|---:|---:|---|---:|---:"
                     "|---:|---:|---:|---|---|"]
    table = rows_by_key(results, "size")
    for size in spec["sizes"]:
        flops = forward_flops(spec, size)
        key = (size, FLOAT32)
        reference_row = table.get("transformers", {}).get(key)
        for framework, rows in table.items():
            row = rows.get(key)
            if row is None:
                continue
            path = "plain" if framework == "transformers" else row.get("path")
            if row.get("note"):
                lines.append("| " + " | ".join(
                    [f"{size:,}", framework, path] + ["—"] * 12
                    + [row["note"]]) + " |")
                continue
            diff, verdict = agreement_cell(row, framework)
            lines.append("| " + " | ".join([
                f"{size:,}", framework, path, execution_cell(framework, row),
                *speed_cells(row, flops, limit, reference_row),
                fmt(row["peak_rss"] / MIB, 0),
                fmt(max(0, row["peak_rss"] - row["base_rss"]) / MIB, 0),
                diff, verdict, "",
            ]) + " |")
    lines += error_rows(results, 16)
    return "\n".join(lines)


def fit_table(spec, all_results):
    """Step times per kind and dtype on each backend: the ratio to the
    fastest backend of that row and mixed_bfloat16's speed-up over
    float32."""
    header = ("| kind | dtype | backend | params | first step (s) "
              "| median step (s) | steps timed | vs fastest backend "
              "| vs own float32 | model ran in warm-up / timed steps "
              "(allowed) | loss after the epoch | load avg |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:"
                     "|---:|"]
    results = all_results
    table = {f: r for f, r in rows_by_key(results, "fit").items()
             if f != "transformers"}
    for dtype in spec["dtypes"]:
        for kind in spec["kinds"]:
            key = (f"{kind} {dtype}", dtype)
            medians = [rows[key]["median_s"] for rows in table.values()
                       if key in rows]
            fastest = min(medians) if medians else None
            for framework, rows in table.items():
                row = rows.get(key)
                if row is None:
                    continue
                float32 = rows.get((f"{kind} {FLOAT32}", FLOAT32), {})
                speedup = (ratio(float32.get("median_s"), row["median_s"])
                           if dtype != FLOAT32 else None)
                lines.append("| " + " | ".join([
                    kind, dtype, framework, f"{row['params']:,}",
                    fmt(row["first_s"], 2), fmt(row["median_s"], 3),
                    str(len(row["times_s"])),
                    fmt(ratio(fastest, row["median_s"]), 2, "x"),
                    fmt(speedup, 2, "x"),
                    f"{row['traces']} / {row['timed_runs']} "
                    f"({row['allowed_runs']})",
                    fmt(row["final_loss"], 4), fmt(row["load"], 1),
                ]) + " |")
    lines += error_rows({f: r for f, r in results.items()
                         if f != "transformers"}, 12)
    return "\n".join(lines)


def flop_check_lines(specs, all_results):
    """Analytic FLOPs vs torch's count on transformers' warm-up call."""
    lines = []
    for name, results in all_results.items():
        rows = results.get("transformers", {}).get("rows", [])
        spec = specs[name]
        for row in rows:
            counted = row.get("counted_flops")
            if not counted or row.get("dtype", FLOAT32) != FLOAT32:
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
        if spec["kind"] in ("scaling", "fit"):
            continue
        table = rows_by_key(results, "batch")
        for dtype in dtypes_of(spec):
            for batch in spec["batches"]:
                flops = (training_step_flops(spec, batch)
                         if spec["kind"] == "training"
                         else batch * forward_flops(spec))
                key = (batch, dtype)
                reference = table.get("transformers", {}).get(key, {})
                values = {}
                for framework, rows in table.items():
                    median = rows.get(key, {}).get("median_s")
                    if median:
                        values[framework] = (
                            flops / median / 1e9,
                            ratio(reference.get("median_s"), median))
                kind = ("training step" if spec["kind"] == "training"
                        else "forward")
                groups.append((f"{name}\nbatch {batch} {kind}\n{dtype}",
                               values))
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
    for dtype, style in ((FLOAT32, "--"), ("bfloat16", ":")):
        rate = limit.get(dtype) if isinstance(limit, dict) else (
            limit if dtype == FLOAT32 else None)
        if rate:
            ax.axhline(rate, color="black", linestyle=style, linewidth=1)
            ax.text(-0.45, rate, f"{dtype} matmul limit {rate:.0f}",
                    va="bottom", fontsize=8)
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
        rows = {size: row for (size, _), row in rows.items()}
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


def matmul_table(machine):
    """Measured matmul rates (GFLOP/s) per dtype and library."""
    rates = machine.get("matmul_gflops", {})
    if not rates:
        return f"(matmul rates not measured: {machine.get('error', '?')})"
    if not isinstance(next(iter(rates.values())), dict):
        rates = {FLOAT32: rates}  # results written before bfloat16 rows
    lines = ["| dtype | product | GFLOP/s |", "|---|---|---:|"]
    for dtype, by_product in rates.items():
        for product, rate in by_product.items():
            lines.append(f"| {dtype} | {product} | {rate:.1f} |")
    limit = machine.get("limit_gflops")
    for dtype, rate in (limit.items() if isinstance(limit, dict) else
                        [(FLOAT32, limit)]):
        lines.append(f"| {dtype} | **limit** (best) | **{fmt(rate, 1)}** |")
    return "\n".join(lines)


def markdown(meta, specs, all_results):
    machine = meta["machine"]
    limit = machine.get("limit_gflops")
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
        "Practical limit: the best median matmul rate per dtype, measured "
        "at the start (n x n products; `% of limit` uses the row's dtype). "
        f"Load average at the start {meta['load_start']:.1f}, at the end "
        f"{meta['load_end']:.1f} (the machine may be shared: a load above "
        "the core count slows every framework, eager torch most; every "
        "row has its own load column).",
        "",
        matmul_table(machine),
        "",
        "Times are medians of the timed runs after one warm-up call (the "
        "warm-up includes tracing and XLA compilation). *Throughput vs "
        "transformers* = transformers' median / ours (above 1: faster than "
        "transformers). GFLOP/s count matrix products only "
        "(`forward_flops`; a training step is 3x the forward). *max abs diff "
        "/ scale*: max|ours - transformers| and max(1, max|transformers|); "
        f"the outputs agree when the first is at most {TOLERANCE:g} x the "
        "second. bfloat16 rows (ours: `bfloat16` for inference, "
        "`mixed_bfloat16` for training; transformers: "
        "`model.to(torch.bfloat16)`) are compared with transformers' "
        "float32 outputs: max|diff| and top-1 agreement, measured, not "
        "held to 2e-5. *vs own float32*: the same framework's float32 "
        "median / this row's. *execution* says how often the model's "
        "Python `call` ran in the warm-up and in the timed calls: on JAX "
        "and TensorFlow a timed call must not run it (eager execution or a "
        "re-trace per call); such a row FAILS and the script exits 1. "
        "Peak RSS is the process's VmHWM, reset before each row.",
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
    for _, spec, results in workloads_of(specs, all_results, "scaling"):
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
    for _, spec, results in workloads_of(specs, all_results, "fit"):
        parts += [
            "## Small-model `fit` step time (ours only)", "",
            "`PerceiverClassifier(PerceiverBackbone(**recommended_config("
            "kind, shape)), 10)`, default `compile()`, one epoch of `fit` "
            f"on NumPy arrays, batch {spec['batch_size']}, "
            f"{spec['steps']} steps; median of the steps after the first "
            "(which traces and compiles). *vs fastest backend*: the "
            "fastest backend's median / this one (1.00x: the fastest). "
            "The model-runs column counts runs of the backbone's `call` in "
            "the first step and in the timed ones; a compiled backend must "
            "not run it after the first step (eager torch: once per "
            "step).", "",
            fit_table(spec, results), ""]
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


