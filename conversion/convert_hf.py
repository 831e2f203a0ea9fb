"""Converts a transformers Perceiver checkpoint into a Keras preset.

    python conversion/convert_hf.py SOURCE --output PRESET_DIR \\
        [--inputs INPUTS_NPZ --save-outputs OUTPUTS_NPZ]

SOURCE is a hub id (`deepmind/vision-perceiver-fourier`, optionally
`hf://...` or `...@revision`) or a `save_pretrained` directory. The weights
(`model.safetensors`, sharded or not, or `pytorch_model.bin`) are read
without torch and without executing anything from the files. The preset
appears at PRESET_DIR only once complete.

With `--inputs`, the converted model is run on the arrays of an `.npz`
whose keys are the keyword arguments of the transformers class's `forward`
(`inputs`, `attention_mask`, `subsampled_output_points`; a nested dict is
flattened with `/`, e.g. `inputs/image`, `subsampled_output_points/audio`),
and its outputs are written under the names of the transformers output
(`logits`, `last_hidden_state`, or `logits/image`, `logits/audio`,
`logits/label`). When transformers and torch are installed, the original
model is run on the same inputs (on example inputs without `--inputs`) and
the comparison is printed.

Exit status: 0 on success, 1 if the conversion fails or the outputs differ
from transformers' beyond max|diff| <= 2e-5 * max(1, max|ref|), 2 on bad
arguments.
"""

import argparse
import importlib.util
import pickle
import sys
import time

import numpy as np

TOLERANCE = 2e-5


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert a transformers Perceiver checkpoint (hub id or "
        "save_pretrained directory) into a Keras preset directory."
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="hub id (owner/name) or save_pretrained directory")
    parser.add_argument("--output", required=True, metavar="PRESET_DIR",
                        help="preset directory to write (replaced if present)")
    parser.add_argument("--inputs", metavar="INPUTS_NPZ",
                        help="forward() arguments to run the model on")
    parser.add_argument("--save-outputs", metavar="OUTPUTS_NPZ",
                        help="where to write the outputs for --inputs")
    args = parser.parse_args(argv)
    if (args.inputs is None) != (args.save_outputs is None):
        parser.error("--inputs and --save-outputs must be given together")
    return args


def unflatten(arrays):
    """`{"inputs/image": a}` -> `{"inputs": {"image": a}}`."""
    nested = {}
    for key, value in arrays.items():
        *parents, leaf = key.split("/")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def compare(outputs, expected):
    """Prints max|diff| per output; True when all are within tolerance."""
    ok = True
    for name in sorted(expected):
        ref = np.asarray(expected[name])
        diff = float(np.abs(np.asarray(outputs[name]) - ref).max(initial=0))
        bound = TOLERANCE * max(1.0, float(np.abs(ref).max(initial=0)))
        verdict = "ok" if diff <= bound else "FAIL"
        ok = ok and diff <= bound
        print(f"  {name}: max|diff| = {diff:.3g} (bound {bound:.3g}) "
              f"{verdict}")
    return ok


def transformers_outputs(directory, inputs):
    """The original model's outputs, or None if transformers is missing."""
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        print("transformers/torch not installed: no comparison")
        return None
    from perceiver_keras.conversion.hf_reference import reference_outputs

    return reference_outputs(directory, inputs)


def main(argv=None):
    args = parse_args(argv)
    from perceiver_keras.conversion.hf import convert_transformers
    from perceiver_keras.conversion.hf import example_inputs
    from perceiver_keras.conversion.hf import local_checkpoint
    from perceiver_keras.conversion.hf import run_inputs

    start = time.time()
    try:
        directory = local_checkpoint(args.source)
        model = convert_transformers(directory, args.output)
        architecture = model.transformers_config["architectures"][0]
        print(f"converted {args.source} ({architecture} -> "
              f"{type(model).__name__}, {model.count_params():,} parameters)"
              f" -> {args.output} in {time.time() - start:.1f}s")
        if args.inputs:
            with np.load(args.inputs) as data:
                inputs = unflatten(dict(data))
        else:
            inputs = example_inputs(model)
        outputs = run_inputs(model, inputs)
        if args.save_outputs:
            np.savez(args.save_outputs, **outputs)
            print(f"outputs {sorted(outputs)} -> {args.save_outputs}")
        expected = transformers_outputs(directory, inputs)
        if expected is not None:
            print("against transformers"
                  + ("" if args.inputs else " (example inputs)") + ":")
            if not compare(outputs, expected):
                return 1
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        # UnsafeCheckpointError is an UnpicklingError: refused, not run.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
