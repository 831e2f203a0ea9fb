"""transformers interop with files written the way users write them.

Checkpoints come from transformers' own classes with configs other than the
released ones (other block and head counts, image sizes, flow sizes), saved
by `save_pretrained` (plain and sharded) or by `torch.save(state_dict())`,
and inputs are any that transformers' model accepts. Expected values are
transformers' outputs on the same weights.
"""

import os

import numpy as np
import pytest

from conftest import assert_close
from test_hf_models import build
from test_hf_models import image_inputs
from test_hf_models import reference
from test_hf_models import small_processor
from test_hf_models import token_inputs

from perceiver_keras.conversion.hf import load_transformers
from perceiver_keras.conversion.hf import run_inputs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def save_state_dict(model, directory):
    """`save_pretrained`, then the weights as users write them by hand:
    `torch.save(model.state_dict(), "pytorch_model.bin")`."""
    model.save_pretrained(directory)
    os.remove(os.path.join(directory, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(directory,
                                                 "pytorch_model.bin"))
    return str(directory)


def check(model, task, inputs):
    expected = reference(model, inputs)
    actual = run_inputs(task, inputs)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_close(actual[name], expected[name])


# --- torch.save(state_dict()) and sharded saves ------------------------------


def test_text_classifier_from_torch_save_state_dict(tmp_path):
    model = build("PerceiverForSequenceClassification", num_blocks=3,
                  num_self_attention_heads=2, num_cross_attention_heads=4)
    task = load_transformers(save_state_dict(model, tmp_path))
    check(model, task, token_inputs(length=24))


def test_masked_lm_sharded_save_pretrained(tmp_path):
    model = build("PerceiverForMaskedLM", num_self_attends_per_block=3,
                  num_self_attention_heads=8)
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    check(model, load_transformers(str(tmp_path)), token_inputs(length=24))


# --- image classifiers: any image size --------------------------------------

IMAGE_CASES = {
    "PerceiverForImageClassificationFourier": dict(
        num_blocks=3, num_self_attention_heads=2, num_latents=6),
    "PerceiverForImageClassificationConvProcessing": dict(
        num_self_attends_per_block=1, num_self_attention_heads=8),
}


@pytest.fixture(scope="module", params=sorted(IMAGE_CASES))
def image_model(request, tmp_path_factory):
    architecture = request.param
    model = build(architecture, **IMAGE_CASES[architecture])
    directory = tmp_path_factory.mktemp("image")
    save_state_dict(model, directory)
    small_processor(32, 36).save_pretrained(directory)
    return model, load_transformers(str(directory))


@pytest.mark.parametrize("size", [(10, 14), (23, 9), (32, 32)])
def test_image_classifier_takes_any_size(image_model, size):
    """transformers computes the Fourier features for the actual grid (at
    the configured maximum resolution): so do we."""
    model, task = image_model
    check(model, task, image_inputs(size))


def test_image_classifier_preprocessor_keeps_processor_size(image_model):
    _, task = image_model
    assert task.backbone.inputs_shape == (None, None, 3)
    assert task.preprocessor.image_converter.image_size == (32, 32)


# --- optical flow: any patches ----------------------------------------------


@pytest.fixture(scope="module")
def flow_model(tmp_path_factory):
    model = build("PerceiverForOpticalFlow", train_size=[10, 12],
                  num_cross_attention_heads=1, num_self_attention_heads=2,
                  num_blocks=2)
    directory = tmp_path_factory.mktemp("flow")
    return model, load_transformers(save_state_dict(model, directory))


def test_optical_flow_takes_any_patches(flow_model):
    """Any [B, 2, 27, H, W] array, not only patches cut from frames."""
    model, task = flow_model
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2, 2, 27, 10, 12)).astype("float32")
    check(model, task, {"inputs": noise})


def test_optical_flow_on_patches_of_frames(flow_model):
    from perceiver_keras.conversion.hf_flow import patches_of
    from perceiver_keras.layers.flow import flow_patches

    model, task = flow_model
    frames = np.random.default_rng(1).normal(size=(1, 2, 10, 12, 3))
    frames = frames.astype("float32")
    inputs = {"inputs": patches_of(frames)}
    check(model, task, inputs)
    # The Keras task on patches cut by the preprocessing helper.
    flow = task(flow_patches(frames), training=False)
    assert_close(flow, reference(model, inputs)["logits"])


def test_patch_check_is_in_the_preprocessing_helper():
    from perceiver_keras.conversion.hf_flow import frames_from_patches
    from perceiver_keras.conversion.hf_flow import patches_of

    frames = np.random.default_rng(2).normal(size=(1, 2, 4, 5, 3))
    frames = frames.astype("float32")
    np.testing.assert_array_equal(frames_from_patches(patches_of(frames)),
                                  frames)
    noise = np.random.default_rng(0).normal(size=(1, 2, 27, 4, 5))
    with pytest.raises(ValueError, match="zero-padded 3x3 patches"):
        frames_from_patches(noise.astype("float32"))


# --- export and download messages -------------------------------------------


@pytest.fixture(scope="module")
def bare_backbone():
    from perceiver_keras.models.perceiver_io.perceiver_backbone import (
        PerceiverBackbone,
    )

    return PerceiverBackbone(inputs_shape=(6, 8), num_latents=4,
                             latent_dim=8, num_self_attends_per_block=1,
                             num_self_attend_heads=2)


def test_failed_export_leaves_previous_export_intact(
    tmp_path, monkeypatch, bare_backbone
):
    from perceiver_keras.conversion.hf_export import export_transformers

    target = tmp_path / "exported"
    export_transformers(bare_backbone, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    rename = os.rename

    def failing_rename(src, dst):
        if os.path.basename(src).startswith(".partial-"):
            raise OSError("disk full")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        export_transformers(bare_backbone, target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["exported"]  # nothing left over
    # A successful export replaces it.
    export_transformers(bare_backbone, target)
    assert sorted(os.listdir(tmp_path)) == ["exported"]


def test_unreachable_hub_recommends_hf_download(monkeypatch):
    import huggingface_hub

    from perceiver_keras.conversion.hf import local_source

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(OSError) as error:
        local_source("hf://deepmind/vision-perceiver-fourier@main")
    message = str(error.value)
    assert ("`hf download deepmind/vision-perceiver-fourier --revision main "
            "--local-dir DIR`") in message
    assert "huggingface-cli" not in message
