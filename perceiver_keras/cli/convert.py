"""`perceiver-keras convert SOURCE --output DIR`.

A SOURCE that is a file is a DeepMind Haiku checkpoint: its model is
`--model NAME` (a built-in preset), `--config CONFIG_JSON`, or, by default,
the built-in preset whose released file has the same name. Anything else
is a transformers checkpoint (save_pretrained directory, `hf://owner/name`
or `owner/name`). `conversion/convert_deepmind.py` and
`conversion/convert_hf.py` are thin wrappers around `deepmind` and
`transformers` here.
"""

import importlib.util
import os
import pickle
import sys
import time

import numpy as np

# Errors a conversion reports in one line instead of a traceback.
# UnsafeCheckpointError is an UnpicklingError: refused, not run.
CONVERSION_ERRORS = (OSError, ValueError, KeyError, pickle.UnpicklingError)


def run(args):
    if os.path.isfile(args.source):
        return deepmind(args)
    if args.model or args.config:
        print("error: --model and --config are for DeepMind checkpoint "
              f"files; {args.source!r} is not a file", file=sys.stderr)
        return 2
    return transformers(args)


def _model_for_file(path):
    """The built-in preset whose released checkpoint is named like `path`."""
    from perceiver_keras.models.presets import builtin_names
    from perceiver_keras.models.presets import builtin_preset

    name = os.path.basename(path)
    for preset in builtin_names():
        if builtin_preset(preset).get("checkpoint") == name:
            return preset
    raise ValueError(
        f"{name!r} is not the file name of a released checkpoint; say which "
        "model it is with --model NAME (one of "
        f"{builtin_names('perceiver_io')}) or --config CONFIG_JSON.")


def deepmind(args):
    """Converts a DeepMind file (`args.source`); returns the exit status."""
    from perceiver_keras.conversion import cli
    from perceiver_keras.conversion.deepmind import convert_deepmind
    from perceiver_keras.conversion.deepmind import read_config
    from perceiver_keras.conversion.deepmind import run_inputs
    from perceiver_keras.models.presets import builtin_preset

    start = time.time()
    try:
        if args.config:
            config = args.config
        else:
            config = builtin_preset(args.model or _model_for_file(
                args.source))
        kind, _ = read_config(config)
        print(f"converting {args.source} ({kind}) ...", flush=True)
        task = convert_deepmind(args.source, config, args.output)
        print(f"converted {args.source} ({kind}, "
              f"{task.count_params():,} parameters) -> {args.output} "
              f"in {time.time() - start:.1f}s", flush=True)
        if args.inputs:
            inputs = cli.load_inputs(args.inputs)
            cli.save_outputs(args.save_outputs, run_inputs(kind, task, inputs))
    except CONVERSION_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _input_bytes(inputs):
    if isinstance(inputs, dict):
        return sum(_input_bytes(v) for v in inputs.values())
    return np.asarray(inputs).nbytes


def reference_missing():
    """Why transformers cannot run here, or None."""
    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        return "transformers/torch not installed"
    return None


def _compare_with_transformers(args, directory, model, inputs, outputs,
                               calls, missing):
    """Exit status of the comparison (see `cli.compare_with_reference`)."""
    from perceiver_keras.conversion import cli

    # transformers' copy of the weights and inputs, plus its plain attention.
    needed = cli.attention_peak_bytes(
        calls, weight_bytes=4 * model.count_params()
    ) + _input_bytes(inputs)

    def run_reference():
        from perceiver_keras.conversion.hf_reference import reference_outputs

        return reference_outputs(directory, inputs)

    return cli.compare_with_reference(
        outputs, "transformers", run_reference, needed,
        compare=args.compare, missing=missing,
        what="" if args.inputs else "(example inputs)",
    )


def transformers(args, reference_missing=reference_missing):
    """Converts a transformers checkpoint (`args.source`), runs it and
    compares with transformers; returns the exit status.
    `reference_missing()` says why transformers cannot run, or None."""
    from perceiver_keras.conversion import cli
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
        return _compare_with_transformers(
            args, directory, model, inputs, outputs, calls,
            reference_missing(),
        )
    except CONVERSION_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
