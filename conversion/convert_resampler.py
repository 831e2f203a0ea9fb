"""Converts the Perceiver Resampler of an IDEFICS or Idefics2 checkpoint.

    python conversion/convert_resampler.py SOURCE --output PRESET_DIR \\
        [--inputs INPUTS_NPZ --save-outputs OUTPUTS_NPZ]

SOURCE is a transformers `save_pretrained` directory of an IDEFICS,
Idefics2 or standalone Idefics2 resampler model, a hub repo
(`hf://owner/name`), or an OpenFlamingo `checkpoint.pt` file (a
`torch.save` state dict; 8 heads assumed, as OpenFlamingo builds it). Only the resampler's tensors are read (only the
shards holding them are opened or downloaded), without torch and without
executing anything from the files. PRESET_DIR receives a
`PerceiverResamplerEncoder` preset, only once complete.

`--inputs` is an `.npz` with `features` `[B, M, C]` (what transformers
passes to the resampler module: IDEFICS' vision features, Idefics2's
modality-projected features) and optionally `attention_mask` `[B, M]`
(1 = real feature); the resampler's output `[B, N, C]` is written to
OUTPUTS_NPZ under `latents`. When transformers and torch are installed,
transformers' resampler module is run on the same weights and inputs (on
random features without `--inputs`) and the difference printed.

Exit status: 0 on success, 1 if the conversion fails or the outputs differ
from transformers' beyond max|diff| <= 2e-5 * max(1, max|ref|), 2 on bad
arguments.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

from perceiver_keras.conversion import cli

TOLERANCE = 2e-5


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert the Perceiver Resampler of an IDEFICS / "
        "Idefics2 checkpoint into a Keras preset directory."
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="save_pretrained directory or hf://owner/name")
    # --inputs: `features` [B, M, C] and optional `attention_mask` [B, M];
    # --save-outputs gets `latents`.
    return cli.parse_arguments(parser, argv)


def read_inputs(path):
    arrays = cli.load_inputs(path)
    unknown = sorted(set(arrays) - {"features", "attention_mask"})
    if "features" not in arrays or unknown:
        raise ValueError(
            f"{path} must hold `features` and optionally `attention_mask`. "
            f"Received keys {sorted(arrays)}."
        )
    features = arrays["features"]
    mask = arrays.get("attention_mask")
    if features.ndim != 3:
        raise ValueError(
            f"`features` must be [B, M, C]. Received shape {features.shape}."
        )
    if mask is not None and mask.shape != features.shape[:2]:
        raise ValueError(
            f"`attention_mask` must be [B, M] = {features.shape[:2]}. "
            f"Received shape {mask.shape}."
        )
    return features, mask


def compare(outputs, expected):
    ref = np.asarray(expected)
    diff = float(np.abs(np.asarray(outputs) - ref).max(initial=0))
    bound = TOLERANCE * max(1.0, float(np.abs(ref).max(initial=0)))
    verdict = "ok" if diff <= bound else "FAIL"
    print(f"  latents: max|diff| = {diff:.3g} (bound {bound:.3g}) {verdict}")
    return diff <= bound


@cli.exits_on_errors
def main(argv=None):
    args = parse_args(argv)
    from perceiver_keras.conversion.resampler import convert_resampler
    from perceiver_keras.conversion.resampler import local_directory
    from perceiver_keras.conversion.resampler import run_resampler

    start = time.time()
    is_file = os.path.isfile(args.source)  # OpenFlamingo checkpoint.pt
    directory = args.source if is_file else local_directory(args.source)
    task = convert_resampler(directory, args.output)
    model_type = task.source_config["model_type"]
    print(f"converted {args.source} ({model_type} resampler, "
          f"{task.count_params():,} parameters) -> {args.output} in "
          f"{time.time() - start:.1f}s")
    if args.inputs:
        features, mask = read_inputs(args.inputs)
    else:
        width = task.backbone.feature_dim
        features = np.random.default_rng(0).normal(
            size=(2, 9, width)).astype("float32")
        mask = None
    outputs = run_resampler(task, features, mask)
    if args.save_outputs:
        cli.save_outputs(args.save_outputs, outputs)
    if is_file:
        print("OpenFlamingo checkpoint: no transformers module to compare")
    elif all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        from perceiver_keras.conversion.resampler_reference import (
            reference_latents,
        )

        expected = reference_latents(directory, features, mask)
        print("against transformers"
              + ("" if args.inputs else " (random features)") + ":")
        if not compare(outputs["latents"], expected):
            return 1
    else:
        print("transformers/torch not installed: no comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
