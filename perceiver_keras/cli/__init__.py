"""The `perceiver-keras` command line: convert, predict, train, info.

    perceiver-keras convert SOURCE --output DIR
    perceiver-keras predict PRESET FILE...
    perceiver-keras train KIND_OR_CONFIG DATA --output DIR
    perceiver-keras info [PRESET]

This module builds the argument parser only and imports neither Keras nor a
backend, so `--help` and argument errors answer at once: the package's
`__init__` calls `answer_early()` before its own imports when this process
is the command line. Each subcommand's module (`perceiver_keras.cli.NAME`)
imports Keras when it runs.

Exit status: 0 on success, 1 when the work fails (one line on stderr says
why), 2 on bad arguments.
"""

import argparse
import os
import sys

PROG = "perceiver-keras"
COMMANDS = ("convert", "predict", "train", "info")
TRAIN_KINDS = ("image", "text", "array")

EPILOG = """\
examples:
  perceiver-keras info perceiver_io_imagenet_conv
  perceiver-keras predict perceiver_io_imagenet_conv cat.jpg
  perceiver-keras predict perceiver_io_language_bytes --text \\
      "This is an incomplete sentence where some words are[MASK][MASK]..."
  perceiver-keras predict perceiver_io_optical_flow frame1.png frame2.png \\
      --output flow.png
  perceiver-keras convert imagenet_conv_preprocessing.pystate --output conv/
  perceiver-keras convert hf://deepmind/vision-perceiver-fourier --output f/
  perceiver-keras train image photos/ --output my_model/

A PRESET is a built-in name (`perceiver-keras info` lists them; the weights
are downloaded and converted on first use into $PERCEIVER_KERAS_HOME,
default ~/.cache/perceiver_keras), a preset directory, or a transformers
checkpoint (hf://owner/name or a save_pretrained directory). Set
KERAS_BACKEND to jax, tensorflow or torch to choose the backend.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Perceiver models for Keras 3: convert released "
        "checkpoints, run them on your files, train on your data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="turn a DeepMind or transformers checkpoint into a "
        "Keras preset directory",
        description="Convert a DeepMind Perceiver IO checkpoint (.pickle / "
        ".pystate Haiku file) or a transformers Perceiver checkpoint "
        "(save_pretrained directory, hf://owner/name or owner/name) into a "
        "Keras preset directory. Nothing in the files is executed; the "
        "preset appears only once complete.",
    )
    convert.add_argument("source", metavar="SOURCE",
                         help="DeepMind checkpoint file, transformers "
                         "directory or hub id")
    source = convert.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="NAME",
                        help="DeepMind file: the built-in model it is "
                        "(default: the one whose released file has this "
                        "file name)")
    source.add_argument("--config", metavar="CONFIG_JSON",
                        help="DeepMind file: a {kind, deepmind_config} JSON")
    convert.add_argument("--output", required=True, metavar="PRESET_DIR",
                         help="preset directory to write (replaced if "
                         "present)")
    convert.add_argument("--inputs", metavar="INPUTS_NPZ",
                         help="arrays to run the converted model on")
    convert.add_argument("--save-outputs", metavar="OUTPUTS_NPZ",
                         help="where to write the outputs for --inputs")
    convert.add_argument(
        "--compare", action=argparse.BooleanOptionalAction, default=None,
        help="transformers source: run transformers on the same inputs and "
        "compare (default: when installed and it fits in memory)")

    predict = commands.add_parser(
        "predict", help="run a model on image or text files",
        description="Run a preset on files. Image classifiers: each image "
        "-> top-5 classes with probabilities. Masked language model: each "
        "text (file or --text) with [MASK] placeholders (one per byte) -> "
        "the filled text. Optical flow: two frames -> a flow PNG (standard "
        "colour wheel: hue is direction, saturation is speed).",
    )
    predict.add_argument("preset", metavar="PRESET")
    predict.add_argument("files", metavar="FILE", nargs="*",
                         help="images, text files, or two frames")
    predict.add_argument("--text", action="append", default=[],
                         help="text to fill (instead of a file); repeatable")
    predict.add_argument("--top", type=int, default=5,
                         help="classes to show per image (default 5)")
    predict.add_argument("--output", metavar="PNG", default="flow.png",
                         help="optical flow: image to write (default "
                         "flow.png); the raw flow goes to the same name "
                         "with .npy")
    predict.add_argument("--json", action="store_true",
                         help="print the results as JSON")
    predict.add_argument("--attention", metavar="PNG",
                         help="also save the encoder cross-attention map of "
                         "the first input (needs perceiver_keras."
                         "visualization)")

    train = commands.add_parser(
        "train", help="train a Perceiver on a folder of images, a CSV or "
        "an .npz",
        description="Train a classifier. DATA is a folder of images with "
        "one sub-folder per class, a CSV with columns text,label, or an "
        ".npz with arrays x and y. KIND is image, text or array (a "
        "recommended small configuration), or a JSON file of "
        "PerceiverBackbone arguments ({\"kind\": ..., plus overrides}). A "
        "held-out part of the data is kept for validation; the best epoch "
        "(lowest validation loss) is saved as a preset in OUTPUT/best, "
        "and OUTPUT/last.keras after every epoch, so --resume continues an "
        "interrupted run.",
    )
    train.add_argument("kind", metavar="KIND_OR_CONFIG",
                       help=f"one of {', '.join(TRAIN_KINDS)}, or a JSON "
                       "file")
    train.add_argument("data", metavar="DATA")
    train.add_argument("--output", required=True, metavar="DIR")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--validation-split", type=float, default=0.2,
                       help="fraction held out (default 0.2)")
    train.add_argument("--image-size", type=int, default=32,
                       help="images are resized to this square size "
                       "(default 32)")
    train.add_argument("--sequence-length", type=int, default=256,
                       help="text: bytes per example (default 256)")
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT/last.keras")

    info = commands.add_parser(
        "info", help="describe a preset (or list the built-in ones)",
        description="Architecture, parameter count, input and output "
        "shapes, and the source and licence of the weights. Builds the "
        "architecture only: nothing is downloaded.",
    )
    info.add_argument("preset", metavar="PRESET", nargs="?",
                      help="built-in name or preset directory (none: list "
                      "the built-in names)")
    return parser


def check_arguments(parser, args):
    """Exits with status 2 on arguments argparse cannot check alone."""
    if args.command == "convert" and (args.inputs is None) != (
            args.save_outputs is None):
        parser.error("--inputs and --save-outputs must be given together")
    if args.command == "predict" and not (args.files or args.text):
        parser.error("predict needs at least one FILE (or --text)")
    if args.command == "predict" and args.top < 1:
        parser.error(f"--top must be at least 1, not {args.top}")
    if args.command == "train":
        if not 0 < args.validation_split < 1:
            parser.error("--validation-split must be between 0 and 1, not "
                         f"{args.validation_split}")
        if args.epochs < 1 or args.batch_size < 1:
            parser.error("--epochs and --batch-size must be at least 1")


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def is_command_line_process():
    """Whether this interpreter was started as `perceiver-keras` or
    `python -m perceiver_keras.cli`."""
    if os.path.basename(sys.argv[0]) == PROG:
        return True
    command = getattr(sys, "orig_argv", [])
    return "-m" in command and command[command.index("-m") + 1:][:1] == [
        "perceiver_keras.cli"]


def answer_early():
    """`--help` and argument errors before Keras starts (see module doc)."""
    if is_command_line_process():
        parse_args(sys.argv[1:])  # exits on --help or bad arguments


def main(argv=None):
    args = parse_args(argv)
    import importlib
    import pickle

    module = importlib.import_module(f"perceiver_keras.cli.{args.command}")
    try:
        return module.run(args)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        # UnsafeCheckpointError is an UnpicklingError: refused, not run.
        # The first line is the reason; any further lines say what to do.
        print(f"{PROG} {args.command}: error: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
