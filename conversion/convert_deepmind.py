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

A thin wrapper: `perceiver-keras convert CHECKPOINT ...` does the same from
a pip install (`perceiver_keras.cli.convert`).
"""

import argparse
import sys

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
    args = cli.parse_arguments(parser, argv)
    args.source = args.checkpoint
    return args


def main(argv=None):
    from perceiver_keras.cli.convert import deepmind

    return deepmind(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
