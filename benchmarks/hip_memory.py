"""Peak memory of training on 1,000,000 input elements: HiP vs the flat
Perceiver.

    python benchmarks/hip_memory.py                   # jax, M = 1e3 and 1e6
    python benchmarks/hip_memory.py --backends jax torch --sizes 1000000

Each (backend, model, M) runs in a fresh child process, so its peak
resident set (VmHWM, Linux) belongs to that run alone. The input is one
modality of M elements with 1 channel, batch 1; the child builds the model,
compiles it with the task's defaults and runs `--steps` training steps
(`train_on_batch`), then prints a JSON line. Models:

- `hip_mae`: `HiPMaskedAutoencoder` (half the elements masked) on a small
  HiP: 3 blocks, M split into `num_groups[0]` = M / 1000 groups of 1000
  elements, 16 latents x 32 channels per group, a 1000 x 64 processor
  (its latents regroup into the 1000 decoder groups); the
  reconstruction head reads all M elements back (the loss is over them).
- `hip_classifier`: `HiPClassifier` on the same HiP with a 10-class label
  modality (encoder blocks + processor + the label's head).
- `flat_classifier`: `PerceiverClassifier` on a `PerceiverBackbone` with
  64 latents x 64 channels reading all M elements in one cross-attention,
  the chunked (streaming softmax) path with `key_value_chunk_size=4096` and
  `remat=True` (its low-memory training setting), no position encoding.

HiP embeds every element to 16 channels and learns a position embedding per
element (M x 16 parameters, as DeepMind's HiP does), so its parameters and
Adam's moments grow with M; the flat Perceiver has no per-element
parameters.
"""

import argparse
import datetime
import json
import os
import platform
import time

from memory_scaling import peak_rss_bytes  # (this folder)
from memory_scaling import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "hip_memory")
MIB = 2**20
GROUP_SIZE = 1000
MODELS = ("hip_mae", "hip_classifier", "flat_classifier")


def small_hip(size, label=False):
    from perceiver_keras import HiPBackbone
    from perceiver_keras.models.hip.hip_presets import small_config

    modalities = {"signal": (size, 1)}
    if label:
        modalities["label"] = (1, 10)
    # The processor's latents regroup into num_groups[2] groups: a
    # multiple of it (1000 latents -> 1 per group at M = 10^6).
    return HiPBackbone(**small_config(
        modalities, max(1, size // GROUP_SIZE), z_index_dim=[16, 1000, 16],
        num_z_channels=[32, 64, 32], num_embedding_channels=16,
        label_modalities=["label"] if label else (),
    ))


def child(model, size, steps):
    import keras
    import numpy as np

    import perceiver_keras as pk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, size, 1), dtype=np.float32)
    if model == "hip_mae":
        task = pk.HiPMaskedAutoencoder(small_hip(size), masking_ratio=0.5,
                                       seed=0)
        data = ({"signal": x},)  # the task masks each batch itself
    elif model == "hip_classifier":
        task = pk.HiPClassifier(small_hip(size, label=True))
        data = ({"signal": x}, np.array([3]))
    else:
        backbone = pk.PerceiverBackbone(
            inputs_shape=(size, 1), num_latents=64, latent_dim=64,
            num_cross_attend_heads=1, num_self_attend_heads=4,
            key_value_chunk_size=4096, remat=True,
        )
        task = pk.PerceiverClassifier(backbone, num_classes=10)
        data = (x, np.array([3]))
    task.compile()
    times = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    # One example, batch 1: each epoch is one training step.
    history = task.fit(*data, batch_size=1, epochs=steps, verbose=0,
                       callbacks=[StepTimer()])
    losses = [float(v) for v in history.history["loss"]]
    assert np.isfinite(losses).all(), losses
    print(json.dumps({
        "peak_rss": peak_rss_bytes(),
        "first_step_seconds": times[0],
        "step_seconds": min(times[1:] or times),
        "losses": losses,
        "num_params": int(task.count_params()),
        "input_bytes": int(x.nbytes),
        "load": os.getloadavg()[0],
    }))


def run_child(backend, model, size, steps, timeout):
    return run_json_child(
        backend, [__file__, "--child", model, str(size), "--steps",
                  str(steps)],
        dict(backend=backend, model=model, size=size, steps=steps), timeout)


def table(records):
    rows = ["| backend | model | M | params | peak RSS (MiB) | first step (s)"
            " | later step (s) | losses |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['backend']} | {r['model']} | {r['size']:,} | "
                        f"failed: {r['error'].splitlines()[-1][:80]} |||||")
            continue
        losses = ", ".join(f"{v:.3g}" for v in r["losses"])
        rows.append(
            f"| {r['backend']} | {r['model']} | {r['size']:,} | "
            f"{r['num_params']:,} | {r['peak_rss'] / MIB:,.0f} | "
            f"{r['first_step_seconds']:.1f} | {r['step_seconds']:.1f} | "
            f"{losses} |"
        )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"))
    parser.add_argument("--backends", nargs="+", default=["jax"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int,
                        default=[1000, 1_000_000])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--output", default=RESULTS,
                        help="results path without extension (.json, .md)")
    parser.add_argument("--append", action="store_true",
                        help="keep the records already in OUTPUT.json")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.steps)
    records = []
    if args.append and os.path.exists(args.output + ".json"):
        with open(args.output + ".json") as f:
            records = json.load(f)["records"]
    for backend in args.backends:
        for size in args.sizes:
            for model in args.models:
                record = run_child(backend, model, size, args.steps,
                                   args.timeout)
                records.append(record)
                print(json.dumps(record), flush=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "steps": args.steps,
    }
    with open(args.output + ".json", "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    with open(args.output + ".md", "w") as f:
        f.write(f"# HiP vs flat Perceiver: peak memory of training steps\n\n"
                f"`python benchmarks/hip_memory.py` ({meta['date'][:16]}, "
                f"{meta['machine']}, batch 1, {args.steps} steps; see the "
                f"script's docstring for the models).\n\n"
                + table(records) + "\n")


if __name__ == "__main__":
    main()
