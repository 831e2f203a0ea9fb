"""`perceiver-keras train KIND_OR_CONFIG DATA --output DIR`.

DATA, by its form:

- a folder with one sub-folder of images per class (names sorted give the
  class ids): images resized to `--image-size` squared, scaled to [0, 1];
- a `.csv` of `text,label` rows (a `text,label` header is skipped; labels
  may be names or integers);
- an `.npz` with `x` (`[N, ...]` float features) and `y` (`[N]` integer
  labels).

KIND picks the model: `image` (pixels with 2-D Fourier positions), `text`
(UTF-8 bytes), `array` (`[N, L]` or `[N, L, C]` sequences with 1-D
positions; `[N, H, W, C]` arrays are images). A JSON file
`{"kind": "image" | "text" | "sequence" | "point_set", ...}` gives
`PerceiverBackbone` arguments that override `recommended_config`'s.

A seeded shuffle holds out `--validation-split` of the data. After every
epoch the whole training state (weights and optimizer) is written to
`OUTPUT/last.keras` and the epoch count to `OUTPUT/state.json`, and when
the validation loss is the lowest so far the model is saved as a preset to
`OUTPUT/best` (with `labels.json`, the class names), each file written
whole or not at all. `--resume` continues from `last.keras`.
"""

import csv
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
STATE_FILE = "state.json"
LAST_FILE = "last.keras"
BEST_DIR = "best"
LABELS_FILE = "labels.json"


# --- data -------------------------------------------------------------------


def read_image_folder(folder, size):
    import keras

    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((Path(folder) / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                image = keras.utils.load_img(path, color_mode="rgb",
                                             target_size=(size, size))
                images.append(np.asarray(image, "float32") / 255.0)
                labels.append(label)
    if len(classes) < 2 or not images:
        raise ValueError(
            f"`DATA` folder {folder} must hold one sub-folder of images per "
            f"class, at least two. Found classes {classes} with "
            f"{len(images)} images.")
    return np.stack(images), np.asarray(labels, "int32"), classes


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and [c.strip().lower() for c in rows[0]] == ["text", "label"]:
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows) if len(row) != 2]
    if not rows or bad:
        raise ValueError(
            f"`DATA` CSV {path} must have rows `text,label`. "
            + (f"Row {bad[0] + 1} has {len(rows[bad[0]])} columns."
               if bad else "It has no rows."))
    texts = [row[0] for row in rows]
    names = [row[1].strip() for row in rows]
    if all(n.lstrip("-").isdigit() for n in names):
        classes = [str(i) for i in range(max(map(int, names)) + 1)]
        labels = [int(n) for n in names]
    else:
        classes = sorted(set(names))
        labels = [classes.index(n) for n in names]
    return np.asarray(texts, object), np.asarray(labels, "int32"), classes


def read_npz(path):
    with np.load(path) as data:
        if "x" not in data or "y" not in data:
            raise ValueError(
                f"`DATA` .npz {path} must hold arrays `x` and `y`. Found "
                f"{sorted(data)}.")
        x, y = data["x"].astype("float32"), data["y"]
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise ValueError(
            f"`y` must be integer labels [N] for x [N, ...]. Received "
            f"x.shape={x.shape}, y.shape={y.shape}, y.dtype={y.dtype}.")
    if x.ndim == 2:
        x = x[..., None]  # [N, L] -> [N, L, 1]: one channel per position
    classes = [str(i) for i in range(int(y.max()) + 1)]
    return x, y.astype("int32"), classes


def read_data(args):
    data = Path(args.data)
    if data.is_dir():
        return read_image_folder(data, args.image_size)
    if data.suffix.lower() == ".csv":
        return read_csv(data)
    if data.suffix.lower() == ".npz":
        return read_npz(data)
    raise ValueError(
        f"`DATA` must be a folder of class sub-folders, a .csv or an .npz. "
        f"Received: {args.data!r}" + ("" if data.exists() else
                                      " (no such file)."))


# --- model ------------------------------------------------------------------


def model_kind(args, x):
    """`(kind, overrides)` from KIND_OR_CONFIG and the data's form."""
    if args.kind.endswith(".json"):
        with open(args.kind, encoding="utf-8") as f:
            overrides = json.load(f)
        if not isinstance(overrides, dict) or "kind" not in overrides:
            raise ValueError(f"{args.kind} must be a JSON object with "
                             "'kind' and PerceiverBackbone arguments.")
        return overrides.pop("kind"), overrides
    from perceiver_keras.cli import TRAIN_KINDS

    if args.kind not in TRAIN_KINDS:
        raise ValueError(f"`KIND_OR_CONFIG` must be one of {TRAIN_KINDS} or "
                         f"a .json file. Received: {args.kind!r}.")
    if args.kind == "array":
        return ("image" if x.ndim == 4 else "sequence"), {}
    return args.kind, {}


def build_task(kind, overrides, x, num_classes, args):
    import perceiver_keras as pk

    if kind == "text":
        if x.dtype != object:
            raise ValueError("kind 'text' trains on a CSV of text,label")
        config = pk.recommended_config(
            "text", (args.sequence_length,), **overrides)
        return pk.PerceiverTextClassifier(
            pk.PerceiverBackbone(**config), num_classes,
            preprocessor=pk.PerceiverTextPreprocessor(
                sequence_length=args.sequence_length))
    if x.dtype == object:
        raise ValueError(f"kind {kind!r} needs arrays or images, not text")
    config = pk.recommended_config(kind, x.shape[1:], **overrides)
    backbone = pk.PerceiverBackbone(**config)
    if kind == "image":
        return pk.PerceiverImageClassifier(backbone, num_classes)
    return pk.PerceiverClassifier(backbone, num_classes)


# --- checkpoints ------------------------------------------------------------


def _write_json_atomically(path, value):
    partial = f"{path}.part"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(partial, path)


def checkpoint_callback(output, classes, state):
    import keras

    from perceiver_keras.conversion.common import write_directory_atomically

    class Checkpoints(keras.callbacks.Callback):
        """Best epoch -> OUTPUT/best (preset); every epoch -> last.keras."""

        def on_epoch_end(self, epoch, logs=None):
            loss = float((logs or {}).get("val_loss", np.inf))
            if loss < state["best_val_loss"]:
                def save(directory):
                    self.model.save_to_preset(directory)
                    _write_json_atomically(
                        os.path.join(directory, LABELS_FILE), classes)

                write_directory_atomically(output / BEST_DIR, save)
                state.update(best_val_loss=loss, best_epoch=epoch + 1)
            partial = output / f".{LAST_FILE}.part.keras"
            self.model.save(partial)
            os.replace(partial, output / LAST_FILE)
            state.update(epoch=epoch + 1, last_val_loss=loss,
                         history=state["history"] + [dict(
                             epoch=epoch + 1, **{k: float(v) for k, v in (
                                 logs or {}).items()})])
            _write_json_atomically(output / STATE_FILE, state)

    return Checkpoints()


def load_checkpoint(path):
    """The task of a `last.keras` with its optimizer state."""
    import keras

    # The optimizer compiled by load_model has no slots yet, so Keras skips
    # the saved ones (with a warning): create them, then read them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipping variable loading for "
                                "optimizer")
        task = keras.saving.load_model(path)
    task.optimizer.build(task.trainable_variables)
    task.load_weights(path)
    return task


def run(args):
    import keras

    output = Path(args.output)
    state_path = output / STATE_FILE
    if args.resume:
        if not (state_path.is_file() and (output / LAST_FILE).is_file()):
            raise ValueError(f"--resume: no {LAST_FILE} and {STATE_FILE} in "
                             f"{output} (start without --resume)")
        state = json.loads(state_path.read_text())
        seed, split = state["seed"], state["validation_split"]
    elif state_path.exists():
        raise ValueError(f"{output} already holds a training run: pass "
                         "--resume to continue it, or choose another "
                         "--output")
    else:
        seed, split = args.seed, args.validation_split
        state = dict(seed=seed, validation_split=split, epoch=0,
                     best_val_loss=float("inf"), best_epoch=None,
                     history=[])

    x, y, classes = read_data(args)
    if len(x) < 2:
        raise ValueError(f"`DATA` needs at least 2 examples; {len(x)} read")
    order = np.random.default_rng(seed).permutation(len(x))
    held_out = max(1, int(round(split * len(x))))
    val, train = order[:held_out], order[held_out:]
    if len(train) == 0:
        raise ValueError("--validation-split leaves no training examples")
    keras.utils.set_random_seed(seed + state["epoch"])

    if args.resume:
        task = load_checkpoint(output / LAST_FILE)
        print(f"resuming after epoch {state['epoch']} (best so far: epoch "
              f"{state['best_epoch']}, val_loss {state['best_val_loss']:.4f})",
              flush=True)
    else:
        kind, overrides = model_kind(args, x)
        task = build_task(kind, overrides, x, len(classes), args)
        if args.learning_rate is not None:
            task.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        output.mkdir(parents=True, exist_ok=True)
    print(f"{len(train)} training and {len(val)} held-out examples, "
          f"{len(classes)} classes; {task.count_params():,} parameters "
          f"({type(task).__name__})", flush=True)
    if state["epoch"] >= args.epochs:
        print(f"already trained {state['epoch']} epochs (--epochs "
              f"{args.epochs}); nothing to do")
        return 0
    task.fit(
        x[train], y[train], batch_size=args.batch_size, epochs=args.epochs,
        initial_epoch=state["epoch"], validation_data=(x[val], y[val]),
        callbacks=[checkpoint_callback(output, classes, state)],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    print(f"best epoch {state['best_epoch']} (val_loss "
          f"{state['best_val_loss']:.4f}) -> {output / BEST_DIR}; "
          f"resume with --resume")
    return 0
