"""Converts a Perceiver AR checkpoint into a Keras preset.

    python conversion/convert_perceiver_ar.py SOURCE [--config CONFIG_JSON] \\
        --output PRESET_DIR [--inputs INPUTS_NPZ --save-outputs OUTPUTS_NPZ]

SOURCE is a DeepMind `checkpoint.dill` (google-research/perceiver-ar; then
`--config` is required, in the format of the fixtures' `config.json`: kind
"deepmind_perceiver_ar" with `constructor_kwargs`) or a krasserm
(perceiver-io) `save_pretrained` directory (`model.safetensors` or
`pytorch_model.bin`) or an `hf://owner/name` of one. Files are read without
executing anything from them. A krasserm directory that holds its
tokenizer (`spiece.model` or `tokenizer.json`) gets a SentencePiece
preprocessor in the preset. The preset appears at PRESET_DIR only once
complete.

With `--inputs`, the converted model runs on an `inputs.npz` laid out as the
fixtures' and writes its outputs under the keys of the matching
`outputs.npz` (DeepMind: `logits`; krasserm: `logits`, `last_hidden_state`
and, from the `gen_*` inputs, `gen_sequences` and `gen_step_logits`).

Exit status: 0 on success, 1 if the conversion fails, 2 on bad arguments.
"""

import argparse
import pickle
import sys
import time

import numpy as np

from perceiver_keras.conversion import cli


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert a Perceiver AR checkpoint (DeepMind "
        "checkpoint.dill or krasserm save_pretrained directory) into a "
        "Keras preset directory."
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("--config", metavar="CONFIG_JSON",
                        help="DeepMind model config (required for .dill)")
    return cli.parse_arguments(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    from perceiver_keras.conversion.common import save_preset_atomically
    from perceiver_keras.conversion.perceiver_ar import convert
    from perceiver_keras.conversion.perceiver_ar import run_inputs

    start = time.time()
    try:
        model, kind = convert(args.source, args.config)
        save_preset_atomically(model, args.output)
        print(f"converted {args.source} ({kind}, {model.count_params():,} "
              f"parameters) -> {args.output} in {time.time() - start:.1f}s")
        if args.inputs:
            with np.load(args.inputs) as data:
                inputs = dict(data)
            outputs = run_inputs(model, kind, inputs)
            np.savez(args.save_outputs, **outputs)
            print(f"outputs {sorted(outputs)} -> {args.save_outputs}")
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        # UnsafeCheckpointError is an UnpicklingError: refused, not run.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
