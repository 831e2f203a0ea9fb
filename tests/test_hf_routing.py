"""from_preset routing of transformers checkpoints (local and hf://)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from test_hf_models import build
from test_hf_models import image_inputs
from test_hf_models import reference
from test_hf_models import save
from test_hf_models import token_inputs

from perceiver_keras.conversion import hf
from perceiver_keras.conversion.hf import convert_transformers
from perceiver_keras.conversion.hf import is_transformers_source
from perceiver_keras.conversion.hf import load_transformers_preset
from perceiver_keras.conversion.hf import run_inputs
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
    PerceiverTextClassifier,
)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    model = build("PerceiverForSequenceClassification")
    return model, save(model, tmp_path_factory.mktemp("seq"))


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory):
    model = build("PerceiverForMaskedLM")
    return model, save(model, tmp_path_factory.mktemp("mlm"), "bin")


def padded(inputs):
    return {"inputs": inputs["inputs"].astype("int32"),
            "padding_mask": inputs["attention_mask"].astype(bool)}


def test_is_transformers_source(classifier_dir, tmp_path):
    _, directory = classifier_dir
    assert is_transformers_source(directory)
    assert not is_transformers_source(str(tmp_path))  # no config.json
    assert not is_transformers_source("perceiver_io_imagenet_conv")
    assert not is_transformers_source(None)
    keras_preset = tmp_path / "keras"
    keras_preset.mkdir()
    (keras_preset / "config.json").write_text(json.dumps(
        {"module": "perceiver_keras", "class_name": "PerceiverBackbone"}))
    assert not is_transformers_source(str(keras_preset))


def test_generic_task_class_follows_architectures(classifier_dir):
    model, directory = classifier_dir
    task = load_transformers_preset(PerceiverTask, directory)
    assert type(task) is PerceiverTextClassifier
    inputs = token_inputs(length=24)
    assert_close(task(padded(inputs)), reference(model, inputs)["logits"])
    assert task.transformers_config["id2label"]["2"] == "class_2"
    # The preprocessor frames text as transformers' tokenizer does.
    assert task.preprocessor.add_special_tokens
    assert task.preprocessor.sequence_length == 24


def test_backbone(classifier_dir):
    _, directory = classifier_dir
    task = load_transformers_preset(PerceiverTask, directory)
    backbone = load_transformers_preset(PerceiverBackbone, directory)
    assert type(backbone) is PerceiverBackbone
    x = padded(token_inputs(length=24))
    assert_close(backbone(x), to_numpy(task.backbone(x)))


def test_wrong_class_is_refused(classifier_dir):
    _, directory = classifier_dir
    with pytest.raises(ValueError, match="cannot be loaded as a "
                       "PerceiverImageClassifier"):
        load_transformers_preset(PerceiverImageClassifier, directory)


def test_classifier_on_masked_lm_checkpoint(masked_lm_dir):
    """As transformers' from_pretrained: same encoder, new head."""
    _, directory = masked_lm_dir
    mlm = load_transformers_preset(PerceiverTask, directory)
    assert type(mlm) is PerceiverMaskedLM
    classifier = load_transformers_preset(
        PerceiverTextClassifier, directory, num_classes=5
    )
    x = padded(token_inputs(length=24))
    assert_close(classifier.backbone(x), to_numpy(mlm.backbone(x)))
    assert tuple(classifier(x).shape) == (3, 5)
    assert classifier.decoder_use_query_residual


def test_kwargs_keep_the_head(classifier_dir):
    model, directory = classifier_dir
    task = load_transformers_preset(
        PerceiverTextClassifier, directory, activation="softmax"
    )
    inputs = token_inputs(length=24)
    logits = reference(model, inputs)["logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert_close(task(padded(inputs)), probabilities)


def test_load_weights_false(classifier_dir, tmp_path):
    _, directory = classifier_dir
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(
        open(os.path.join(directory, "config.json")).read())
    task = load_transformers_preset(PerceiverTask, str(config_only),
                                    load_weights=False)
    assert type(task) is PerceiverTextClassifier
    with pytest.raises(FileNotFoundError, match="No weights"):
        load_transformers_preset(PerceiverTask, str(config_only))


def test_converted_preset_reloads_with_keras_hub(tmp_path):
    model = build("PerceiverForImageClassificationLearned")
    source = save(model, tmp_path / "hf")
    convert_transformers(source, tmp_path / "preset")
    saved = json.loads((tmp_path / "preset" / "transformers_config.json")
                       .read_text())
    assert saved["architectures"] == ["PerceiverForImageClassificationLearned"]
    task = PerceiverTask.from_preset(str(tmp_path / "preset"))
    assert type(task) is PerceiverImageClassifier
    inputs = image_inputs((8, 8))
    images = np.transpose(inputs["inputs"], (0, 2, 3, 1))
    assert_close(task(images), reference(model, inputs)["logits"])
    assert task.preprocessor.image_converter.mode == "transformers"


def test_hf_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(OSError, match="Could not download 'deepmind/"
                       "vision-perceiver-fourier' from the Hugging Face Hub"):
        load_transformers_preset(PerceiverTask,
                                 "hf://deepmind/vision-perceiver-fourier")


def test_hf_download_uses_the_hub_cache(monkeypatch, classifier_dir):
    """hf:// goes through huggingface_hub (here: a fake hub serving a local
    directory), config first, then one weight format."""
    import huggingface_hub

    _, directory = classifier_dir
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return directory

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    task = load_transformers_preset(PerceiverTask, "hf://someone/tiny@main")
    assert type(task) is PerceiverTextClassifier
    assert calls[0] == ("someone/tiny", "main", hf.METADATA_FILES)
    assert "model*.safetensors" in calls[-1][2]


def test_hf_really_offline(tmp_path):
    """With no network (or HF_HUB_OFFLINE), the real client fails fast."""
    code = textwrap.dedent(
        """
        from perceiver_keras.conversion.hf import load_transformers_preset
        from perceiver_keras.models.perceiver_task import PerceiverTask
        try:
            load_transformers_preset(PerceiverTask,
                                     "hf://deepmind/language-perceiver")
        except OSError as e:
            print("OSError:", e)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
           "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run([sys.executable, "-c", code], env=env,
                            capture_output=True, text=True, timeout=300)
    assert "OSError: Could not download 'deepmind/language-perceiver'" in (
        result.stdout), result.stderr[-2000:]


def test_from_preset_hook(classifier_dir):
    """`PerceiverTask.from_preset` on a transformers directory, once
    `presets.from_preset` routes to `load_transformers_preset`."""
    model, directory = classifier_dir
    task = PerceiverTask.from_preset(directory)
    assert type(task) is PerceiverTextClassifier
    backbone = PerceiverBackbone.from_preset(directory)
    inputs = token_inputs(length=24)
    assert_close(task(padded(inputs)), reference(model, inputs)["logits"])
    assert_close(backbone(padded(inputs)),
                 to_numpy(task.backbone(padded(inputs))))


def test_run_inputs_names_outputs_as_transformers(masked_lm_dir):
    model, directory = masked_lm_dir
    task = load_transformers_preset(PerceiverTask, directory)
    outputs = run_inputs(task, token_inputs(length=24))
    assert list(outputs) == ["logits"]
