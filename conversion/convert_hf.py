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

A thin wrapper: `perceiver-keras convert SOURCE ...` does the same from a
pip install (`perceiver_keras.cli.convert`).
"""

import argparse
import sys

from perceiver_keras.cli.convert import reference_missing
from perceiver_keras.cli.convert import transformers
from perceiver_keras.conversion import cli


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert a transformers Perceiver checkpoint (hub id or "
        "save_pretrained directory) into a Keras preset directory."
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="hub id (owner/name) or save_pretrained directory")
    return cli.parse_arguments(parser, argv, reference="transformers")


def main(argv=None):
    # `reference_missing` is looked up here, so a test can replace it.
    return transformers(parse_args(argv), reference_missing)


if __name__ == "__main__":
    sys.exit(main())
