"""The `perceiver-keras` command line (`perceiver_keras.cli`).

Start-up behaviour (--help without a backend, exit codes, one-line errors)
runs the real command in a subprocess; the subcommands' results run
in-process through `main(argv)` (one backend start for the module) and are
checked against the Python API on the same presets: the DeepMind fixture
checkpoints converted once per module.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import assert_close
from perceiver_keras.cli import main
from perceiver_keras.cli.flow_image import flow_to_rgb
from perceiver_keras.cli.train import load_checkpoint
from perceiver_keras.conversion.deepmind import convert_deepmind
from perceiver_keras.models.perceiver_task import PerceiverTask

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "deepmind"


def run_command(*args):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(),
           "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "perceiver_keras.cli",
         *map(str, args)],
        capture_output=True, text=True, env=env, timeout=600,
    )


def imported_modules(importtime_stderr):
    """Top-level module names in `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def error_lines(stderr):
    return [line for line in stderr.splitlines()
            if not line.startswith("import time:")]


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """`{kind: preset dir}` of fixture checkpoints, converted once."""
    root = tmp_path_factory.mktemp("presets")
    converted = {}
    for kind in ("image_fourier", "mlm", "optical_flow"):
        folder = FIXTURES / f"{kind}-public"
        config = json.loads((folder / "config.json").read_text())
        convert_deepmind(folder / config["checkpoint"], config, root / kind)
        converted[kind] = root / kind
    return converted


# --- start-up and bad input (subprocess) -------------------------------------


def test_help_starts_no_backend():
    result = run_command("--help")
    assert result.returncode == 0
    for command in ("convert", "predict", "train", "info"):
        assert command in result.stdout
    modules = imported_modules(result.stderr)
    assert "perceiver_keras" in modules
    assert not modules & {"keras", "keras_hub", "tensorflow", "jax", "torch"}
    assert error_lines(result.stderr) == []


def test_bad_arguments_exit_2_with_one_line_reason():
    result = run_command("predict", "some_preset")
    assert result.returncode == 2
    assert error_lines(result.stderr)[-1] == (
        "perceiver-keras: error: predict needs at least one FILE (or --text)")
    assert "keras" not in imported_modules(result.stderr)


def test_failure_exits_1_with_one_line_reason(tmp_path):
    result = run_command("info", tmp_path / "missing")
    assert result.returncode == 1
    # (Under the TensorFlow backend, TensorFlow's start-up lines precede it.)
    lines = error_lines(result.stderr)
    assert sum(line.startswith("perceiver-keras") for line in lines) == 1
    assert lines[-1].startswith("perceiver-keras info: error: ValueError: "
                               "`PRESET` must be a built-in name")


# --- subcommands (in-process) ------------------------------------------------


def test_convert_deepmind_file_and_info(tmp_path, capsys):
    folder = FIXTURES / "image_fourier-public"
    output = tmp_path / "converted"
    assert main(["convert", str(folder / "checkpoint.pystate"), "--config",
                 str(folder / "config.json"), "--output", str(output)]) == 0
    task = PerceiverTask.from_preset(str(output))
    with np.load(folder / "inputs.npz") as inputs, \
            np.load(folder / "outputs.npz") as outputs:
        assert_close(task(inputs["images"]), outputs["logits"])
    capsys.readouterr()

    # A file name that is not a released checkpoint needs --model/--config.
    assert main(["convert", str(folder / "checkpoint.pystate"),
                 "--output", str(tmp_path / "other")]) == 1
    assert "--model NAME" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

    assert main(["info", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"parameters       : {task.count_params():,}" in printed
    assert "PerceiverImageClassifier" in printed
    assert "(None, 16, 16, 3)" in printed and "(None, 10)" in printed


def test_info_of_a_builtin_name_downloads_nothing(tmp_path, monkeypatch,
                                                  capsys):
    """A built-in definition (here a small one, found through
    $PERCEIVER_KERAS_PRESET_PATH, shaped like presets/perceiver_io/*.json)
    is described from its keras_config and metadata alone."""
    from perceiver_keras.conversion.deepmind import kind_module
    from perceiver_keras.models.presets import keras_config

    config = json.loads(
        (FIXTURES / "optical_flow-public" / "config.json").read_text())
    task = kind_module(config["kind"]).build_task(config["deepmind_config"])
    spec = {"name": "tiny_flow_info", "kind": config["kind"],
            "checkpoint": "x.pickle",
            "checkpoint_url": "http://127.0.0.1:9/x.pickle",
            "checkpoint_sha256": None, "license": "CC-BY-4.0",
            "attribution": "fixture", "description": "a small flow model",
            "convert_command": "perceiver-keras convert x.pickle",
            "deepmind_config": config["deepmind_config"],
            "keras_config": keras_config(task)}
    (tmp_path / "defs" / "test").mkdir(parents=True)
    (tmp_path / "defs" / "test" / "tiny_flow_info.json").write_text(
        json.dumps(spec))
    monkeypatch.setenv("PERCEIVER_KERAS_PRESET_PATH", str(tmp_path / "defs"))
    monkeypatch.setenv("PERCEIVER_KERAS_HOME", str(tmp_path / "home"))
    assert main(["info", "tiny_flow_info"]) == 0
    printed = capsys.readouterr().out
    assert f"parameters       : {task.count_params():,}" in printed
    assert "PerceiverOpticalFlow" in printed
    assert "license          : CC-BY-4.0" in printed
    assert "source           : http://127.0.0.1:9/x.pickle" in printed
    assert not (tmp_path / "home").exists()
    assert main(["info"]) == 0  # the list includes built-in names
    listed = capsys.readouterr().out
    assert "perceiver_io_optical_flow" in listed and "tiny_flow_info" in listed


def test_predict_images_gives_the_tasks_probabilities(presets, tmp_path,
                                                      capsys):
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate([(20, 24), (16, 16)]):  # any size
        pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        files.append(tmp_path / f"image{i}.png")
        Image.fromarray(pixels).save(files[-1])
    assert main(["predict", str(presets["image_fourier"]), *map(str, files),
                 "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)

    task = PerceiverTask.from_preset(str(presets["image_fourier"]))
    for result, path in zip(results, files):
        image = np.asarray(Image.open(path), "float32")[None]
        logits = task.predict(image, verbose=0)[0].astype("float64")
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        best = np.argsort(-expected)[:3]
        assert [row["class"] for row in result["top"]] == best.tolist()
        assert_close(np.array([row["probability"] for row in result["top"]]),
                     expected[best])
        # 10 classes, no names recorded: ids are shown.
        assert result["top"][0]["name"] == f"class {best[0]}"


def test_predict_fills_masks_like_fill_mask(presets, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text("The quick brown [MASK][MASK][MASK] jumps.\n")
    texts = ["The quick brown [MASK][MASK][MASK] jumps.",
             "[MASK]ello world"]
    assert main(["predict", str(presets["mlm"]), str(text_file),
                 "--text", texts[1]]) == 0
    printed = capsys.readouterr().out.splitlines()
    task = PerceiverTask.from_preset(str(presets["mlm"]))
    assert printed == task.fill_mask(texts)
    assert main(["predict", str(presets["mlm"]), "--text", "no mask"]) == 1
    assert "[MASK]" in capsys.readouterr().err


def test_predict_flow_writes_the_flow_and_its_colour_image(presets, tmp_path,
                                                           capsys):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 12, 16, 3), dtype=np.uint8)
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for frame, path in zip(frames, files):
        Image.fromarray(frame).save(path)
    output = tmp_path / "flow.png"
    assert main(["predict", str(presets["optical_flow"]), *map(str, files),
                 "--output", str(output)]) == 0
    assert "flow ->" in capsys.readouterr().out

    task = PerceiverTask.from_preset(str(presets["optical_flow"]))
    pair = (frames[None].astype("float32") / 255 * 2 - 1)
    expected = task.predict({"inputs": pair}, verbose=0)[0]
    flow = np.load(tmp_path / "flow.npy")
    assert_close(flow, expected)
    image = np.asarray(Image.open(output))
    assert image.shape == (12, 16, 3)
    np.testing.assert_array_equal(image, flow_to_rgb(flow))


def test_colour_wheel_matches_the_middlebury_code():
    """Values of the benchmark's colour coding (computed by hand from its
    published algorithm): right = red, left = (0, 209, 255), down is
    half-way between wheel entries 13 and 14, still = white, and speeds
    are relative to the fastest pixel."""
    flow = np.array([[[1, 0], [-1, 0], [0, 1], [0, 0], [0.5, 0]]], float)
    np.testing.assert_array_equal(flow_to_rgb(flow)[0], [
        [255, 0, 0], [0, 209, 255], [255, 229, 0], [255, 255, 255],
        [255, 127, 127]])
    with pytest.raises(ValueError, match=r"\[height, width, 2\]"):
        flow_to_rgb(np.zeros((4, 4, 3)))


def test_predict_attention_writes_the_cross_attention_png(presets, tmp_path):
    from PIL import Image as PILImage

    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    out = tmp_path / "attention.png"
    code = main(["predict", str(presets["image_fourier"]), str(image),
                 "--attention", str(out)])
    assert code == 0 and out.stat().st_size > 0
    with PILImage.open(out) as png:  # one 200-pixel panel per latent, head
        assert png.size[0] % 200 == 0 and png.size[1] % 200 == 0


def held_out_split(n, seed=0, fraction=0.2):
    """The split `train` documents: a seeded permutation, first part held
    out."""
    order = np.random.default_rng(seed).permutation(n)
    held_out = max(1, int(round(fraction * n)))
    return order[held_out:], order[:held_out]


def test_train_npz_checkpoints_best_epoch_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6, 2)).astype("float32")
    y = (x[:, :, 0].mean(1) > 0).astype("int32")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    # A JSON config: recommended_config's, smaller.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "kind": "sequence", "num_latents": 8, "latent_dim": 16,
        "num_blocks": 1, "num_self_attends_per_block": 1,
        "num_self_attend_heads": 2}))
    run = tmp_path / "run"
    argv = ["train", str(config), str(tmp_path / "data.npz"), "--output",
            str(run), "--batch-size", "8"]
    assert main(argv + ["--epochs", "1"]) == 0
    assert main(argv + ["--epochs", "1"]) == 1  # would overwrite the run
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--epochs", "2", "--resume"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out

    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    losses = [h["val_loss"] for h in state["history"]]
    assert state["best_epoch"] == 1 + int(np.argmin(losses))
    train, val = held_out_split(len(x))
    # The best preset is the best epoch's model: its held-out loss is the
    # one recorded for that epoch.
    best = PerceiverTask.from_preset(str(run / "best"))
    loss = best.evaluate(x[val], y[val], verbose=0)[0]
    assert abs(loss - state["best_val_loss"]) <= 1e-4 * max(1, loss)
    # The last checkpoint holds the optimizer after both epochs' steps: the
    # resumed run continued the first one's optimizer state.
    last = load_checkpoint(run / "last.keras")
    assert last.backbone.num_latents == 8
    steps = 2 * int(np.ceil(len(train) / 8))
    assert int(keras.ops.convert_to_numpy(last.optimizer.iterations)) == steps
    assert json.loads((run / "best" / "labels.json").read_text()) == [
        "0", "1"]


def test_train_image_folder_then_predict_names_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, colour in (("blue", (30, 30, 220)), ("red", (220, 30, 30))):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(colour + rng.normal(0, 20, (9, 11, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "image", str(tmp_path / "images"), "--output",
                 str(run), "--epochs", "2", "--batch-size", "4",
                 "--image-size", "8"]) == 0
    assert json.loads((run / "best" / "labels.json").read_text()) == [
        "blue", "red"]
    capsys.readouterr()
    image = tmp_path / "images" / "red" / "0.png"
    assert main(["predict", str(run / "best"), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert sorted(row["name"] for row in top) == ["blue", "red"]
    # Without a preprocessor the image is resized and scaled to [0, 1].
    task = PerceiverTask.from_preset(str(run / "best"))
    pixels = keras.ops.image.resize(
        np.asarray(Image.open(image), "float32")[None], (8, 8)) / 255.0
    logits = task.predict(keras.ops.convert_to_numpy(pixels), verbose=0)[0]
    expected = np.exp(logits - logits.max()) / np.exp(
        logits - logits.max()).sum()
    assert_close(np.array([row["probability"] for row in top]),
                 np.sort(expected)[::-1])
