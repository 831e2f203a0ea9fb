"""The transformers side: seeded checkpoints, reference outputs and eager
PyTorch timings (`model(...)` under `torch.no_grad()`; the training step
with `torch.optim.Adam`). bfloat16 rows run `model.to(torch.bfloat16)`."""

import json
import math
import os
import time

from throughput.measure import ProgressRows
from throughput.measure import address_space_limit
from throughput.measure import available_memory
from throughput.measure import configure_torch
from throughput.measure import read_status
from throughput.measure import reference_path
from throughput.measure import reset_peak_rss
from throughput.measure import run_workloads
from throughput.measure import time_calls
from throughput.workloads import CONFIG_DEFAULTS
from throughput.workloads import GIB
from throughput.workloads import SEED
from throughput.workloads import array_batch
from throughput.workloads import image_batch
from throughput.workloads import image_size_of
from throughput.workloads import labels_batch
from throughput.workloads import transformers_inputs


def randomize(model, torch, seed):
    """Redraws every float parameter so that a wrong weight or operation
    shows in the outputs (transformers' init, std 0.02, makes attention
    nearly uniform): matrices (Linear, conv, embeddings, latents) ~
    N(0, 1/fan_in), LayerNorm scales 1 + N(0, 0.1^2), vectors N(0, 0.02^2).
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                tensor.normal_(0.0, 1.0 / math.sqrt(fan_in))
            elif "layernorm" in name and name.endswith("weight"):
                tensor.normal_(1.0, 0.1)
            else:
                tensor.normal_(0.0, 0.02)
    return model


def write_checkpoint(spec, directory, torch):
    """A seeded random transformers model, saved with save_pretrained."""
    import transformers

    config = transformers.PerceiverConfig(**spec["config"])
    config.architectures = [spec["architecture"]]
    torch.manual_seed(SEED)
    model = getattr(transformers, spec["architecture"])(config)
    randomize(model, torch, SEED).save_pretrained(directory)
    if spec["architecture"] == "PerceiverForImageClassificationFourier":
        # Our loader takes the input size from the image processor's output
        # size (transformers' model accepts any size).
        size = {"height": spec["image_size"], "width": spec["image_size"]}
        processor = {"image_processor_type": "PerceiverImageProcessor",
                     "size": size, "crop_size": size}
        with open(os.path.join(directory, "preprocessor_config.json"),
                  "w") as f:
            json.dump(processor, f, indent=2)


def load_transformers_model(spec, directory):
    import transformers

    start = time.perf_counter()
    cls = getattr(transformers, spec["architecture"])
    model = cls.from_pretrained(directory).eval()
    return model, time.perf_counter() - start


class MatmulFlopCounter:
    """Counts the FLOPs of the aten matrix products a call dispatches
    (torch's own formulas, `torch.utils.flop_counter.flop_registry`).

    torch's FlopCounterMode does the same but also tracks modules, which
    fails under `torch.no_grad` on transformers' Perceiver (torch 2.13).
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total = 0
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def torch_dtype(torch, dtype):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def transformers_inference(job, spec, torch):
    import numpy as np

    rows = ProgressRows(job)
    for dtype in spec.get("dtypes", ["float32"]):
        model, load_s = load_transformers_model(spec, job["checkpoint"])
        model.to(torch_dtype(torch, dtype))
        for batch in spec["batches"]:
            inputs = {k: torch.from_numpy(v)
                      for k, v in transformers_inputs(spec, batch).items()}
            inputs = {k: v.to(torch_dtype(torch, dtype))
                      if v.is_floating_point() else v
                      for k, v in inputs.items()}

            def call():
                with torch.no_grad():
                    return model(**inputs).logits

            base_rss = reset_peak_rss()
            counter = MatmulFlopCounter()
            logits, record = time_calls(call, job["repeats"], job["budget_s"],
                                        counter)
            if dtype == "float32":  # the reference of every row
                np.save(reference_path(job, batch), logits.numpy())
            rows.append(dict(record, batch=batch, dtype=dtype, load_s=load_s,
                             peak_rss=read_status("VmHWM"), base_rss=base_rss,
                             counted_flops=counter.total))
        model = None
    return rows


def transformers_training(job, spec, torch):
    import torch.nn.functional as F

    rows = ProgressRows(job)
    for dtype in spec.get("dtypes", ["float32"]):
        # Fresh weights per dtype: the float32 steps changed them.
        model, load_s = load_transformers_model(spec, job["checkpoint"])
        model.to(torch_dtype(torch, dtype)).train()
        optimizer = torch.optim.Adam(model.parameters(),
                                     lr=spec["learning_rate"], eps=1e-8)
        for batch in spec["batches"]:
            images = torch.from_numpy(
                image_batch(image_size_of(spec), batch)).to(
                    torch_dtype(torch, dtype))
            labels = torch.from_numpy(
                labels_batch(batch, spec["config"]["num_labels"]))
            losses = []

            def step():
                optimizer.zero_grad(set_to_none=True)
                logits = model(inputs=images).logits
                loss = F.cross_entropy(logits.float(), labels)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                return losses[-1]

            base_rss = reset_peak_rss()
            counter = MatmulFlopCounter()
            first_loss, record = time_calls(step, job["repeats"],
                                            job["budget_s"], counter)
            if dtype == "float32":
                with open(reference_path(job, batch, ".json"), "w") as f:
                    json.dump({"first_loss": first_loss}, f)
            rows.append(dict(record, batch=batch, dtype=dtype, load_s=load_s,
                             first_loss=first_loss, last_loss=losses[-1],
                             steps=len(losses), peak_rss=read_status("VmHWM"),
                             base_rss=base_rss,
                             counted_flops=counter.total))
        model = optimizer = None
    return rows


def attention_score_bytes(spec, num_inputs, batch=1):
    """Bytes of transformers' float32 cross-attention scores."""
    c = {**CONFIG_DEFAULTS, **spec["config"]}
    return 4 * batch * c["num_cross_attention_heads"] * c["num_latents"] \
        * num_inputs


def transformers_scaling(job, spec, torch):
    """Sizes in increasing order; a size whose scores (twice: the scaled
    logits and the softmax exist together) do not fit is not run."""
    # 1 GiB for everything else on the machine; at most 20 GiB.
    headroom = min(20 * GIB, available_memory() - GIB)
    with address_space_limit(headroom):
        return scaling_rows(job, spec, torch, headroom)


def scaling_rows(job, spec, torch, headroom):
    import numpy as np

    model, load_s = load_transformers_model(spec, job["checkpoint"])
    channels = spec["config"]["d_model"]
    rows, failed = ProgressRows(job), None
    for size in spec["sizes"]:
        row = dict(size=size, load_s=load_s, first_s=None, times_s=[],
                   median_s=None)
        # Scores twice, plus the input, its LayerNorm, keys and values.
        needed = 2 * attention_score_bytes(spec, size) + 4 * size * channels * 4
        row["needed_bytes"] = needed
        free = available_memory() - GIB
        if failed:
            row["note"] = f"not run: M={failed:,} was out of memory"
        elif needed > min(free, headroom):
            row["note"] = (f"not run: needs {needed / GIB:.1f} GiB, "
                           f"{min(free, headroom) / GIB:.1f} GiB available")
        if "note" in row or not job["run_model"]:
            rows.append(row)
            continue
        x = torch.from_numpy(array_batch(size, channels))

        def call():
            with torch.no_grad():
                return model(inputs=x).last_hidden_state

        base_rss = reset_peak_rss()
        try:
            counter = MatmulFlopCounter()
            hidden, record = time_calls(call, job["repeats"], job["budget_s"],
                                        counter)
        except (RuntimeError, MemoryError) as e:
            if "memory" not in str(e).lower() and not isinstance(
                    e, MemoryError):
                raise
            failed = size
            row.update(note=f"out of memory ({type(e).__name__})",
                       peak_rss=read_status("VmHWM"), base_rss=base_rss)
            rows.append(row)
            continue
        np.save(reference_path(job, size), hidden.numpy())
        row.update(record, peak_rss=read_status("VmHWM"), base_rss=base_rss,
                   counted_flops=counter.total)
        rows.append(row)
        x = hidden = None  # free this size's arrays before the next
    return rows


def transformers_child(job):
    """Per workload: the checkpoint, the reference outputs and (unless
    only references are wanted) transformers' timings."""
    torch = configure_torch(job["threads"])
    runners = {"inference": transformers_inference,
               "training": transformers_training,
               "scaling": transformers_scaling}

    def run(workload_job, spec):
        if spec["kind"] == "fit":
            return []  # ours only: no checkpoint, no reference
        write_checkpoint(spec, workload_job["checkpoint"], torch)
        return runners[spec["kind"]](workload_job, spec, torch)

    run_workloads(job, run)


