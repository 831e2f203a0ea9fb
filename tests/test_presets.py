"""Built-in presets: metadata, how a built-in name resolves, the error that
says how to convert. (Full-size offline builds and parameter counts are in
`test_convert_deepmind.py::test_builtin_model_matches_released_checkpoint`.)
"""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras.conversion.deepmind import KINDS
from perceiver_keras.conversion.deepmind import convert_deepmind
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.models.presets import builtin_names
from perceiver_keras.models.presets import builtin_preset
from perceiver_keras.models.presets import local_preset_dir
from perceiver_keras.models.perceiver_task import PerceiverTask

FIXTURES = Path(__file__).parent / "fixtures" / "deepmind"
RELEASED = {  # name: (kind, params, reported results, checkpoint file)
    "perceiver_io_imagenet_learned": (
        "image_learned", 62_255_848, {"imagenet_top1": 72.7},
        "imagenet_learned_position_encoding.pystate"),
    "perceiver_io_imagenet_fourier": (
        "image_fourier", 48_440_627, {"imagenet_top1": 79.0},
        "imagenet_fourier_position_encoding.pystate"),
    "perceiver_io_imagenet_conv": (
        "image_conv", 48_646_522, {"imagenet_top1": 82.1},
        "imagenet_conv_preprocessing.pystate"),
    "perceiver_io_language_bytes": (
        "mlm", 201_108_230, {}, "language_perceiver_io_bytes.pickle"),
    "perceiver_io_optical_flow": (
        "optical_flow", 41_057_134, {"sintel_clean_epe": 1.81},
        "optical_flow_checkpoint.pystate"),
    "perceiver_io_multimodal_kinetics700": (
        "multimodal", 19_858_855, {}, "video_autoencoding_checkpoint.pystate"),
}


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    """No user-level converted copies leak into the tests."""
    home = tmp_path / "perceiver_keras_home"
    monkeypatch.setenv("PERCEIVER_KERAS_HOME", str(home))
    return home


def test_six_builtin_presets_with_released_metadata():
    assert builtin_names("perceiver_io") == sorted(RELEASED)
    for name, (kind, params, results, checkpoint) in RELEASED.items():
        spec = builtin_preset(name)
        assert spec["name"] == name and spec["kind"] == kind
        assert kind in KINDS
        assert spec["params"] == params
        assert spec["reported_results"] == results
        assert spec["checkpoint"] == checkpoint
        assert spec["checkpoint_url"] == (
            f"https://storage.googleapis.com/perceiver_io/{checkpoint}"
        )
        assert spec["license"] == "CC-BY-4.0"
        assert "Creative Commons Attribution 4.0" in spec["attribution"]
        assert "DeepMind" in spec["attribution"]
        assert spec["description"]
        assert isinstance(spec["deepmind_config"], dict)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="perceiver_io_imagenet_conv"):
        builtin_preset("perceiver_io_imagenet")


def test_missing_weights_error_says_how_to_convert(empty_home, monkeypatch):
    # Offline, the download route (test_download.py) gives the manual way.
    monkeypatch.setenv("PERCEIVER_KERAS_OFFLINE", "1")
    name = "perceiver_io_imagenet_conv"
    for cls in (PerceiverImageClassifier, PerceiverTask, PerceiverBackbone):
        with pytest.raises(ValueError) as error:
            cls.from_preset(name)
        message = str(error.value)
        assert (
            "perceiver-keras convert "
            "imagenet_conv_preprocessing.pystate "
            f"--model {name} --output {empty_home / name}"
        ) in message
        assert builtin_preset(name)["checkpoint_url"] in message
        assert "load_weights=False" in message
        assert "CC-BY-4.0" in message


def test_local_converted_copy_is_loaded_by_name(empty_home):
    """A preset converted into $PERCEIVER_KERAS_HOME/NAME is what NAME loads.

    The fixture checkpoint stands in for the released one.
    """
    name = "perceiver_io_imagenet_conv"
    folder = FIXTURES / "image_conv-public"
    config = json.loads((folder / "config.json").read_text())
    converted = convert_deepmind(
        folder / config["checkpoint"], config, local_preset_dir(name)
    )
    assert local_preset_dir(name) == empty_home / name

    with np.load(folder / "inputs.npz") as inputs:
        images = inputs["images"]
    with np.load(folder / "outputs.npz") as outputs:
        expected = outputs["logits"]
    classifier = PerceiverImageClassifier.from_preset(name)
    assert_close(classifier(images), expected)
    # The base class loads the class the preset records.
    assert type(PerceiverTask.from_preset(name)) is PerceiverImageClassifier
    backbone = PerceiverBackbone.from_preset(name)
    assert_close(backbone(images), to_numpy(converted.backbone(images)))


def test_other_preset_strings_take_keras_hubs_path(tmp_path):
    missing = tmp_path / "not_a_preset"
    with pytest.raises(Exception) as error:
        PerceiverImageClassifier.from_preset(str(missing))
    assert "convert_deepmind" not in str(error.value)


def test_preset_files_are_package_data():
    root = Path(__file__).parents[1]
    assert '"presets/perceiver_io/*.json"' in (
        root / "pyproject.toml").read_text()
    for name in RELEASED:
        assert (root / "presets" / "perceiver_io" / f"{name}.json").is_file()
