"""`perceiver-keras predict PRESET FILE...`: a preset on the user's files.

What it does follows the task the preset holds:

- image classifiers: each image (any size; the preset's preprocessor crops
  and resizes it, or, without one, it is resized to the model's input and
  scaled to [0, 1]) -> the top classes with softmax probabilities. Class
  names come from the preset's `labels.json` (`train` writes it), the
  checkpoint's `id2label` (transformers) or, for 1000 classes, keras-hub's
  ImageNet list; otherwise class ids are shown.
- masked language model: each text (a file, or `--text`) with one `[MASK]`
  per byte to fill -> the filled text (`PerceiverMaskedLM.fill_mask`).
- optical flow: two frames (scaled to [-1, 1] as in DeepMind's colab) ->
  a PNG in the standard colour wheel, plus the raw flow as `.npy`. Frames
  larger than the model's window go through `predict_tiled`.
"""

import json
import sys
from pathlib import Path

import numpy as np


def load_task(preset, load_weights=True):
    """A built-in name, preset directory, or transformers source."""
    from keras_hub.src.utils.preset_utils import check_config_class
    from keras_hub.src.utils.preset_utils import load_json

    from perceiver_keras.models.perceiver_task import PerceiverTask

    directory = Path(preset)
    if (directory / "task.json").is_file():
        cls = check_config_class(load_json(str(directory), "task.json"))
        return cls.from_preset(str(directory), load_weights=load_weights)
    # Built-in names and transformers sources go through their routes.
    return PerceiverTask.from_preset(preset, load_weights=load_weights)


def load_image(path):
    import keras

    try:
        image = keras.utils.load_img(path, color_mode="rgb")
    except ImportError as e:
        raise ValueError("Reading images needs Pillow: pip install "
                         "pillow") from e
    return np.asarray(image, dtype="float32")


def class_names(task, preset):
    """`{class id: name}` from the preset's `labels.json` (written by
    `train`), the checkpoint's `id2label`, or keras-hub's ImageNet list."""
    labels = Path(preset) / "labels.json"
    if labels.is_file():
        return dict(enumerate(json.loads(labels.read_text())))
    config = getattr(task, "transformers_config", None) or {}
    if config.get("id2label"):
        return {int(k): v for k, v in config["id2label"].items()}
    if getattr(task, "num_classes", None) == 1000:
        from keras_hub.src.utils.imagenet.imagenet_utils import (
            IMAGENET_NAMES,
        )

        return {i: IMAGENET_NAMES[i][1] for i in range(1000)}
    return {}


def predict_input(task, image):
    """What `task.predict` takes for one image: the raw image when the
    preset has a preprocessor (predict applies it), otherwise the image
    resized to the model's input size and scaled to [0, 1]."""
    import keras

    if task.preprocessor is not None:
        return image[None]
    height, width = task.backbone.inputs_shape[:2]
    resized = keras.ops.image.resize(image[None], (height, width))
    return keras.ops.convert_to_numpy(resized) / 255.0


def model_inputs(task, x):
    """The model's own input for `x` (preprocessed, as a dict)."""
    import keras

    if task.preprocessor is not None:
        x = task.preprocessor(x)
    if not isinstance(x, dict):
        x = {"inputs": x}
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


def softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def classify(task, preset, files, top):
    names = class_names(task, preset)
    results = []
    for path in files:
        x = predict_input(task, load_image(path))
        logits = np.asarray(task.predict(x, verbose=0), "float64")[0]
        probabilities = softmax(logits)
        best = np.argsort(-probabilities)[:top]
        results.append({"file": str(path), "top": [
            {"class": int(i), "name": names.get(int(i), f"class {i}"),
             "probability": float(probabilities[i])} for i in best]})
    return results, model_inputs(task, predict_input(
        task, load_image(files[0])))


def fill_masks(task, files, texts):
    texts = [Path(f).read_text(encoding="utf-8").rstrip("\n")
             for f in files] + list(texts)
    if not any("[MASK]" in t for t in texts):
        raise ValueError("the texts contain no [MASK]: put one [MASK] per "
                         "byte to fill, e.g. 'a [MASK][MASK][MASK] day'")
    filled = task.fill_mask(texts)
    return [{"text": t, "filled": f} for t, f in zip(texts, filled)]


def optical_flow(task, files, output):
    if len(files) != 2:
        raise ValueError("an optical-flow preset needs exactly two frames. "
                         f"Received {len(files)} files.")
    try:
        from PIL import Image
    except ImportError as e:
        raise ValueError("Writing the flow image needs Pillow: pip install "
                         "pillow") from e

    from perceiver_keras.cli.flow_image import flow_to_rgb

    frames = [load_image(f) for f in files]
    if frames[0].shape != frames[1].shape:
        raise ValueError("the two frames must have the same size. Received "
                         f"{frames[0].shape} and {frames[1].shape}.")
    pair = (np.stack(frames)[None] / 255.0 * 2 - 1).astype("float32")
    window = tuple(task.backbone.inputs_shape[1:3])
    if pair.shape[2:4] == window:
        flow = np.asarray(task.predict({"inputs": pair}, verbose=0))[0]
    else:
        print(f"frames {pair.shape[2:4]} are not the model's {window}: "
              "computing flow from overlapping windows", file=sys.stderr)
        flow = task.predict_tiled(pair)[0]
    output = Path(output)
    Image.fromarray(flow_to_rgb(flow)).save(output)
    np.save(output.with_suffix(".npy"), flow)
    speed = np.hypot(flow[..., 0], flow[..., 1])
    return [{"files": list(map(str, files)), "png": str(output),
             "flow": str(output.with_suffix(".npy")),
             "max_speed": float(speed.max()),
             "mean_speed": float(speed.mean())}], {"inputs": pair}


def save_attention(task, inputs, path):
    """`inputs` are already the model's own (preprocessed), so the maps are
    drawn from the backbone, which does not preprocess again."""
    from perceiver_keras.visualization import save_attention_png

    save_attention_png(task.backbone, inputs, path)
    print(f"attention map -> {path}", file=sys.stderr)


def run(args):
    from perceiver_keras.models.perceiver_io.perceiver_masked_lm import (
        PerceiverMaskedLM,
    )
    from perceiver_keras.models.perceiver_io.perceiver_optical_flow import (
        PerceiverOpticalFlow,
    )
    from perceiver_keras.models.perceiver_io.perceiver_classifier import (
        PerceiverClassifier,
    )

    task = load_task(args.preset)
    if isinstance(task, PerceiverMaskedLM):
        results, inputs = fill_masks(task, args.files, args.text), None
    elif args.text:
        raise ValueError(f"--text is for masked language models; "
                         f"{args.preset} is a {type(task).__name__}")
    elif isinstance(task, PerceiverOpticalFlow):
        results, inputs = optical_flow(task, args.files, args.output)
    elif isinstance(task, PerceiverClassifier) and hasattr(
            task.backbone, "inputs_shape") and len(
            task.backbone.inputs_shape) == 3:
        results, inputs = classify(task, args.preset, args.files, args.top)
    else:
        raise ValueError(
            f"predict handles image classifiers, masked language models "
            f"and optical flow; {args.preset} is a {type(task).__name__}")
    if args.attention:
        if inputs is None:
            raise ValueError("--attention is for image and flow presets")
        save_attention(task, inputs, args.attention)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        if "top" in result:
            print(result["file"])
            for row in result["top"]:
                print(f"  {row['probability']:7.4f}  {row['name']} "
                      f"({row['class']})")
        elif "filled" in result:
            print(result["filled"])
        else:
            print(f"flow -> {result['png']} (raw: {result['flow']}); "
                  f"max speed {result['max_speed']:.2f}, mean "
                  f"{result['mean_speed']:.2f} px")
    return 0
