"""Parity with transformers: tiny random checkpoints, all model classes.

Helpers first (also used by the other test_hf_* files), then the tests.

Nothing is downloaded: every checkpoint is built here from a small
`PerceiverConfig`, its weights redrawn at a scale where mistakes show
(transformers' own init, std 0.02, makes every output nearly constant), and
saved as transformers would (`model.safetensors`) or in the older
`pytorch_model.bin` format (`torch.save` of the state dict).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Large enough to make attention selective and errors visible, small enough
# that float32 round-off is not amplified past the tolerance.
WEIGHT_SCALE = 0.15

TINY = dict(
    num_latents=8, d_latents=32, d_model=16, num_blocks=2,
    num_self_attends_per_block=2, num_self_attention_heads=4,
    num_cross_attention_heads=2, max_position_embeddings=24, image_size=8,
    num_labels=3, attention_probs_dropout_prob=0.0,
)
# The image models' input widths (261, 322, 512) take one head.
TINY_IMAGE = dict(TINY, num_cross_attention_heads=1)


def tiny_config(**overrides):
    config = transformers.PerceiverConfig(**{**TINY, **overrides})
    config.id2label = {i: f"class_{i}" for i in range(config.num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def randomize(model, seed=0):
    """Redraws every float tensor (LayerNorm scales around 1, positive
    BatchNorm variances)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape,
                                              generator=generator))
            elif "layernorm" in name and name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            else:
                tensor.copy_(WEIGHT_SCALE * noise)
    return model.eval()


def build(architecture, config=None, seed=0, **config_overrides):
    """A randomized transformers model of class `architecture`."""
    if config is None:
        base = TINY_IMAGE if "Image" in architecture else TINY
        config = tiny_config(**{**base, **config_overrides})
    return randomize(getattr(transformers, architecture)(config), seed)


def save(model, directory, weights_format="safetensors", processor=None):
    """`save_pretrained`, then optionally rewrite the weights as `.bin`."""
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    if weights_format == "bin":
        os.remove(os.path.join(directory, "model.safetensors"))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    return str(directory)


def reference(model, inputs):
    """transformers' outputs on NumPy `inputs`, named as our `run_inputs`."""
    from perceiver_keras.conversion.hf_reference import name_outputs
    from perceiver_keras.conversion.hf_reference import to_torch

    with torch.no_grad():
        return name_outputs(model(**{k: to_torch(v)
                                     for k, v in inputs.items()}))


def token_inputs(batch=3, length=20, max_length=24, seed=0):
    """Token ids with a padded batch: rows of decreasing valid length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 262, (batch, length))
    valid = np.linspace(length, max(1, length // 3), batch).astype(int)
    mask = np.arange(length)[None] < valid[:, None]
    ids = np.where(mask, ids, 0)
    return {"inputs": ids.astype("int64"), "attention_mask": mask.astype(
        "int64")}


def image_inputs(size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.normal(size=(batch, 3, *size)).astype("float32")}


# --- tests -------------------------------------------------------------------

import keras  # noqa: E402

from conftest import assert_close  # noqa: E402
from perceiver_keras.conversion.hf import load_transformers  # noqa: E402
from perceiver_keras.conversion.hf import run_inputs  # noqa: E402

FORMATS = ("safetensors", "bin")


def check_parity(model, directory, inputs):
    """Loads `directory` and compares every output with transformers'."""
    converted = load_transformers(directory)
    expected = reference(model, inputs)
    actual = run_inputs(converted, inputs)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_close(actual[name], expected[name])
    return converted


def check_text_task(tmp_path, weights_format, architecture, task_name,
                    short_length):
    """A converted text `architecture` (a `task_name`) matches transformers
    on 24 tokens and on `short_length`; the task called on the padded
    24-token inputs gives transformers' logits."""
    model = build(architecture)
    directory = save(model, tmp_path, weights_format)
    inputs = token_inputs(length=24)
    task = check_parity(model, directory, inputs)
    assert type(task).__name__ == task_name
    check_parity(model, directory, token_inputs(length=short_length, seed=1))
    padded = {"inputs": inputs["inputs"].astype("int32"),
              "padding_mask": inputs["attention_mask"].astype(bool)}
    assert_close(task(padded), reference(model, inputs)["logits"])


@pytest.mark.parametrize("weights_format", FORMATS)
def test_sequence_classification(tmp_path, weights_format):
    # Shorter inputs are padded with a masked tail: same logits.
    check_text_task(tmp_path, weights_format,
                    "PerceiverForSequenceClassification",
                    "PerceiverTextClassifier", short_length=11)


@pytest.mark.parametrize(
    "variant",
    [
        dict(qk_channels=8, v_channels=32),
        dict(cross_attention_shape_for_attention="q"),
        dict(hidden_act="gelu_new", cross_attention_widening_factor=2,
             self_attention_widening_factor=3, num_blocks=3),
        dict(use_query_residual=False, num_self_attends_per_block=1),
    ],
)
def test_config_variants(tmp_path, variant):
    model = build("PerceiverForSequenceClassification", **variant)
    check_parity(model, save(model, tmp_path), token_inputs(length=24))


@pytest.mark.parametrize("weights_format", FORMATS)
def test_masked_lm(tmp_path, weights_format):
    # Shorter inputs: the decoder still answers all 24 positions. Padded
    # positions included: the task does not mask decoder queries.
    check_text_task(tmp_path, weights_format, "PerceiverForMaskedLM",
                    "PerceiverMaskedLM", short_length=9)


@pytest.mark.parametrize("weights_format", FORMATS)
def test_perceiver_model_without_preprocessor(tmp_path, weights_format):
    model = build("PerceiverModel")
    directory = save(model, tmp_path, weights_format)
    rng = np.random.default_rng(0)
    inputs = {
        "inputs": rng.normal(size=(3, 10, 16)).astype("float32"),
        "attention_mask": (np.arange(10)[None] < np.array([[10], [6], [3]]))
        .astype("int64"),
    }
    backbone = check_parity(model, directory, inputs)
    assert type(backbone).__name__ == "PerceiverBackbone"
    check_parity(model, directory, {"inputs": inputs["inputs"]})


def test_perceiver_model_with_text_preprocessor(tmp_path):
    from transformers.models.perceiver import modeling_perceiver as hf

    config = tiny_config()
    model = randomize(transformers.PerceiverModel(
        config, input_preprocessor=hf.PerceiverTextPreprocessor(config)
    ))
    backbone = check_parity(model, save(model, tmp_path),
                            token_inputs(length=15))
    assert type(backbone.input_adapter).__name__ == "PerceiverTokenAdapter"


def test_perceiver_model_with_other_preprocessor_is_refused(tmp_path):
    from transformers.models.perceiver import modeling_perceiver as hf

    config = tiny_config(d_model=261)
    model = transformers.PerceiverModel(
        config, input_preprocessor=hf.PerceiverImagePreprocessor(
            config, prep_type="conv1x1", out_channels=4,
            position_encoding_type="trainable", project_pos_dim=4,
            trainable_position_encoding_kwargs=dict(num_channels=4,
                                                    index_dims=64),
        ),
    )
    with pytest.raises(ValueError, match="only a PerceiverTextPreprocessor"):
        load_transformers(save(model, tmp_path))


@pytest.mark.parametrize("weights_format", FORMATS)
def test_image_classification_learned(tmp_path, weights_format):
    model = build("PerceiverForImageClassificationLearned")
    directory = save(model, tmp_path, weights_format)
    task = check_parity(model, directory, image_inputs((8, 8)))
    assert type(task).__name__ == "PerceiverImageClassifier"


def small_processor(size, crop):
    from transformers import PerceiverImageProcessorPil

    # Only its saved configuration is used (sizes, mean, std).
    return PerceiverImageProcessorPil(
        size={"height": size, "width": size},
        crop_size={"height": crop, "width": crop},
    )


@pytest.mark.parametrize("weights_format", FORMATS)
def test_image_classification_fourier(tmp_path, weights_format):
    model = build("PerceiverForImageClassificationFourier")
    # The input size is the image processor's output size.
    directory = save(model, tmp_path, weights_format,
                     processor=small_processor(32, 36))
    task = check_parity(model, directory, image_inputs((32, 32)))
    assert task.preprocessor.image_converter.image_size == (32, 32)


@pytest.mark.parametrize("weights_format", FORMATS)
def test_image_classification_conv(tmp_path, weights_format):
    model = build("PerceiverForImageClassificationConvProcessing")
    # No preprocessor_config.json: PerceiverImageProcessor's 224x224.
    directory = save(model, tmp_path, weights_format)
    task = check_parity(model, directory, image_inputs((224, 224), batch=1))
    # Padded 3, unpadded max pool: 55 x 55 tokens.
    assert task.backbone.input_adapter.compute_output_shape(
        (None, 224, 224, 3))[1] == 55 * 55


def test_sharded_checkpoint(tmp_path):
    model = build("PerceiverForSequenceClassification")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    check_parity(model, str(tmp_path), token_inputs(length=24))


def test_mismatched_checkpoint_is_reported(tmp_path):
    model = build("PerceiverForSequenceClassification")
    directory = save(model, tmp_path)
    config = json_load(tmp_path / "config.json")
    config["num_self_attends_per_block"] = 1
    json_dump(config, tmp_path / "config.json")
    with pytest.raises(ValueError, match="in the checkpoint but not used"):
        load_transformers(directory)


def test_unsupported_activation_is_refused(tmp_path):
    model = build("PerceiverForSequenceClassification", hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act"):
        load_transformers(save(model, tmp_path))


def json_load(path):
    import json

    with open(path) as f:
        return json.load(f)


def json_dump(value, path):
    import json

    with open(path, "w") as f:
        json.dump(value, f)


@pytest.mark.parametrize("weights_format", FORMATS)
def test_optical_flow(tmp_path, weights_format):
    from perceiver_keras.conversion.hf_flow import patches_of

    model = build("PerceiverForOpticalFlow", train_size=[12, 16],
                  num_cross_attention_heads=1)
    directory = save(model, tmp_path, weights_format)
    frames = np.random.default_rng(0).normal(size=(2, 2, 12, 16, 3))
    inputs = {"inputs": patches_of(frames.astype("float32"))}
    task = check_parity(model, directory, inputs)
    assert type(task).__name__ == "PerceiverOpticalFlow"
    assert task.flow_scale_factor == 1.0


def test_optical_flow_takes_any_patches(tmp_path):
    """As transformers: any [B, 2, 27, H, W], not only patches of frames."""
    model = build("PerceiverForOpticalFlow", train_size=[12, 16],
                  num_cross_attention_heads=1)
    noise = np.random.default_rng(0).normal(size=(1, 2, 27, 12, 16))
    check_parity(model, save(model, tmp_path),
                 {"inputs": noise.astype("float32")})


MULTIMODAL = dict(
    num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=2,
    num_self_attention_heads=4, num_cross_attention_heads=1, num_labels=5,
    num_frames=2, audio_samples_per_frame=32, samples_per_patch=4,
    image_size=8, output_shape=[1, 2, 8, 8], output_num_channels=12,
    _label_trainable_num_channels=20,
)


def multimodal_inputs(image_points, audio_points, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "inputs": {
            "audio": rng.normal(size=(2, 64, 1)).astype("float32"),
            "image": rng.normal(size=(2, 2, 3, 8, 8)).astype("float32"),
            "label": np.eye(5, dtype="float32")[[1, 3]],
        },
        "subsampled_output_points": {
            "image": np.asarray(image_points, "int64"),
            "audio": np.asarray(audio_points, "int64"),
        },
    }


@pytest.mark.parametrize("weights_format", FORMATS)
def test_multimodal_autoencoding(tmp_path, weights_format):
    model = build("PerceiverForMultimodalAutoencoding",
                  config=tiny_config(**MULTIMODAL))
    directory = save(model, tmp_path, weights_format)
    task = check_parity(model, directory,
                        multimodal_inputs(np.arange(0, 40), np.arange(3, 9)))
    assert type(task).__name__ == "PerceiverMultimodalAutoencoder"
    # Any points: the last chunk, scattered points.
    check_parity(model, directory,
                 multimodal_inputs(np.arange(100, 128), [15, 0, 7], seed=1))
    with pytest.raises(ValueError, match="subsampled_output_points"):
        run_inputs(task, {"inputs": multimodal_inputs([0], [0])["inputs"]})
