"""Converts a DeepMind Perceiver IO checkpoint into a Keras preset.

    python conversion/convert_deepmind.py CHECKPOINT \\
        (--model NAME | --config CONFIG_JSON) --output PRESET_DIR \\
        [--inputs INPUTS_NPZ --save-outputs OUTPUTS_NPZ]

NAME is a built-in preset (see `presets/`); CONFIG_JSON is a file like a
fixture's `config.json` (`kind` + DeepMind's module arguments). The
checkpoint is read without Haiku or JAX and without executing anything from
the file. The preset appears at PRESET_DIR only once complete. With
`--inputs`, the converted model itself (not its preprocessor) is run on the
arrays of an `inputs.npz` laid out as the fixtures' and its outputs are
written under the fixture's output keys (after the preset is written).
There is no reference to compare against here: DeepMind's code needs
Haiku; the fixtures' `outputs.npz` hold its outputs.

Exit status: 0 on success, 1 if the conversion fails, 2 on bad arguments.
"""

import argparse
import pickle
import sys
import time

from perceiver_keras.conversion import cli


def parse_args(argv):
    from perceiver_keras.models.presets import builtin_names

    parser = argparse.ArgumentParser(
        description="Convert a DeepMind Perceiver IO checkpoint (Haiku "
        "pickle) into a Keras preset directory."
    )
    parser.add_argument("checkpoint", help="the .pickle / .pystate file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=builtin_names("perceiver_io"),
                        help="a built-in model")
    source.add_argument("--config", metavar="CONFIG_JSON",
                        help="a {kind, deepmind_config} JSON file")
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    cli.check_arguments(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    from perceiver_keras.conversion.deepmind import convert_deepmind
    from perceiver_keras.conversion.deepmind import read_config
    from perceiver_keras.conversion.deepmind import run_inputs
    from perceiver_keras.models.presets import builtin_preset

    start = time.time()
    try:
        config = builtin_preset(args.model) if args.model else args.config
        kind, _ = read_config(config)
        task = convert_deepmind(args.checkpoint, config, args.output)
        print(f"converted {args.checkpoint} ({kind}, "
              f"{task.count_params():,} parameters) -> {args.output} "
              f"in {time.time() - start:.1f}s")
        if args.inputs:
            inputs = cli.load_inputs(args.inputs)
            cli.save_outputs(args.save_outputs, run_inputs(kind, task, inputs))
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        # UnsafeCheckpointError is an UnpicklingError: refused, not run.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
