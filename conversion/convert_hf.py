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
`logits/label`). Then, when transformers and torch are installed, the
original model is run on the same inputs (on example inputs without
`--inputs`) and the comparison is printed; unless `--compare` is given, it
is skipped (one line says so) when transformers' estimated peak memory
(plain attention: all scores at once) exceeds the memory available, as
for long inputs. `--no-compare` never runs it. The preset and the outputs
are written before any comparison.

Exit status: 0 on success, 1 if the conversion fails, the outputs differ
from transformers' beyond max|diff| <= 2e-5 * max(1, max|ref|), or a
comparison asked for with `--compare` cannot run; 2 on bad arguments.
"""

import argparse
import importlib.util
import pickle
import sys
import time

import numpy as np

from perceiver_keras.conversion import cli


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert a transformers Perceiver checkpoint (hub id or "
        "save_pretrained directory) into a Keras preset directory."
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="hub id (owner/name) or save_pretrained directory")
    cli.add_arguments(parser, reference="transformers")
    args = parser.parse_args(argv)
    cli.check_arguments(parser, args)
    return args


def input_bytes(inputs):
    if isinstance(inputs, dict):
        return sum(input_bytes(v) for v in inputs.values())
    return np.asarray(inputs).nbytes


def reference_missing():
    """Why transformers cannot run here, or None."""
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        return "transformers/torch not installed"
    return None


def compare_with_transformers(args, directory, model, inputs, outputs, calls):
    """Exit status of the comparison (see `cli.compare_with_reference`)."""
    # transformers' copy of the weights and inputs, plus its plain attention.
    needed = cli.attention_peak_bytes(
        calls, weight_bytes=4 * model.count_params()
    ) + input_bytes(inputs)

    def run_reference():
        from perceiver_keras.conversion.hf_reference import reference_outputs

        return reference_outputs(directory, inputs)

    return cli.compare_with_reference(
        outputs, "transformers", run_reference, needed,
        compare=args.compare, missing=reference_missing(),
        what="" if args.inputs else "(example inputs)",
    )


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
              f" -> {args.output} in {time.time() - start:.1f}s", flush=True)
        if args.inputs:
            inputs = cli.load_inputs(args.inputs, nested=True)
        else:
            inputs = example_inputs(model)
        outputs, calls = cli.run_recording_sizes(
            lambda: run_inputs(model, inputs)
        )
        if args.save_outputs:
            cli.save_outputs(args.save_outputs, outputs)
        return compare_with_transformers(
            args, directory, model, inputs, outputs, calls
        )
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        # UnsafeCheckpointError is an UnpicklingError: refused, not run.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
