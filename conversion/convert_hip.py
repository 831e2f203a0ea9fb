"""Converts DeepMind Hierarchical Perceiver parameters into a Keras preset.

    python conversion/convert_hip.py PARAMS_NPZ --config CONFIG_JSON \\
        --output PRESET_DIR [--inputs INPUTS_NPZ --save-outputs OUTPUTS_NPZ]

PARAMS_NPZ holds DeepMind's parameter tree as a `params.npz` (key = Haiku
module path + `/` + parameter name; a Haiku pickle of the same tree works
too, read without running anything from it). CONFIG_JSON is laid out as a
fixture's `config.json`: `kind` (HiP, HiPClassBottleneck or PerceiverIO),
`constructor_kwargs` (DeepMind's), `input_order`, `input_shapes`. The
preset (a HiPClassifier when there are label modalities, else a
HiPMaskedAutoencoder) appears at PRESET_DIR only once complete. With
`--inputs`, the converted backbone runs on the arrays of an `inputs.npz`
(one `[B, index, channels]` array per modality) and its outputs are written
under the fixture's `outputs.npz` keys (`reconstruction/<m>`,
`latents/<m>`, `block_<i>`, `grouped/...`, `recon_head_grouped...`).

Exit status: 0 on success, 1 if the conversion fails, 2 on bad arguments.
"""

import argparse
import sys
import time

from perceiver_keras.conversion import cli


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert DeepMind HiP parameters (params.npz or Haiku "
        "pickle) into a Keras preset directory."
    )
    parser.add_argument("params", help="params.npz (or a Haiku pickle)")
    parser.add_argument("--config", required=True, metavar="CONFIG_JSON",
                        help="kind, constructor_kwargs, input_order, "
                        "input_shapes")
    return cli.parse_arguments(parser, argv)


@cli.exits_on_errors
def main(argv=None):
    args = parse_args(argv)
    from perceiver_keras.conversion.hip import convert_hip
    from perceiver_keras.conversion.hip import run_inputs

    start = time.time()
    task = convert_hip(args.params, args.config, args.output)
    print(f"converted {args.params} ({type(task).__name__}, "
          f"{task.count_params():,} parameters) -> {args.output} "
          f"in {time.time() - start:.1f}s")
    if args.inputs:
        outputs = run_inputs(task.backbone, cli.load_inputs(args.inputs))
        cli.save_outputs(args.save_outputs, outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
