"""Export to transformers: PerceiverFor....from_pretrained reproduces the
Keras outputs; options transformers cannot express are refused."""

import numpy as np
import pytest

from conftest import assert_close
from test_hf_models import build
from test_hf_models import image_inputs
from test_hf_models import reference
from test_hf_models import save
from test_hf_models import small_processor
from test_hf_models import token_inputs

from perceiver_keras.conversion.hf import architecture_module
from perceiver_keras.conversion.hf import load_transformers
from perceiver_keras.conversion.hf_export import describe
from perceiver_keras.conversion.hf_export import export_transformers
from perceiver_keras.conversion.hf_flow import patches_of

transformers = pytest.importorskip("transformers")


def keras_outputs(model, inputs):
    architecture = describe(model)[0]
    return architecture_module(architecture).run_inputs(model, architecture,
                                                        inputs)


def fine_tune(model, seed=1):
    """Moves every weight, as training would."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if "moving_variance" in variable.path:
            value = value * rng.uniform(0.8, 1.2, value.shape)
        else:
            value = value + 0.05 * rng.normal(size=value.shape)
        variable.assign(value.astype(variable.dtype))


def float64_reference(model, inputs):
    """transformers' outputs computed in float64: a reference free of the
    float32 round-off of torch's CPU kernels, which varies with the kernel
    oneDNN picks on a given machine (seen on CI: 5e-5 on the conv model)."""
    import torch

    from perceiver_keras.conversion.hf_reference import name_outputs

    def to_torch64(value):
        value = np.asarray(value)
        if value.dtype.kind in "iub":
            return torch.from_numpy(value.astype("int64"))
        return torch.from_numpy(value.astype("float64"))

    with torch.no_grad():
        outputs = name_outputs(model.double()(
            **{k: to_torch64(v) for k, v in inputs.items()}))
    return {k: np.asarray(v, "float32") for k, v in outputs.items()}


def check_export(model, tmp_path, inputs, architecture):
    directory = export_transformers(model, tmp_path / "exported")
    exported = getattr(transformers, architecture).from_pretrained(directory)
    expected = keras_outputs(model, inputs)
    actual = float64_reference(exported.eval(), inputs)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_close(actual[name], expected[name])
    return directory


CASES = {
    "PerceiverForSequenceClassification": (
        {}, lambda: token_inputs(length=24)),
    "PerceiverForImageClassificationLearned": (
        {}, lambda: image_inputs((8, 8))),
    "PerceiverForImageClassificationFourier": (
        {"processor": (32, 36)}, lambda: image_inputs((32, 32))),
    "PerceiverForImageClassificationConvProcessing": (
        {"processor": (64, 72)}, lambda: image_inputs((64, 64))),
    "PerceiverForOpticalFlow": (
        {"train_size": [12, 16], "num_cross_attention_heads": 1},
        lambda: {"inputs": patches_of(np.random.default_rng(0).normal(
            size=(2, 2, 12, 16, 3)).astype("float32"))}),
    "PerceiverModel": (
        {}, lambda: {"inputs": np.random.default_rng(0).normal(
            size=(2, 10, 16)).astype("float32"),
            "attention_mask": np.array([[1] * 10, [1] * 4 + [0] * 6])}),
}


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_round_trip_after_fine_tuning(tmp_path, architecture):
    options, make_inputs = CASES[architecture]
    options = dict(options)
    processor = options.pop("processor", None)
    model = build(architecture, **options)
    source = save(model, tmp_path / "source", processor=(
        small_processor(*processor) if processor else None))
    converted = load_transformers(source)
    fine_tune(converted)
    directory = check_export(converted, tmp_path, make_inputs(), architecture)
    config = transformers.PerceiverConfig.from_pretrained(directory)
    if "Image" in architecture or "Sequence" in architecture:
        assert config.id2label[2] == "class_2"
    if processor:
        image_processor = (
            transformers.PerceiverImageProcessorPil.from_pretrained(directory)
        )
        assert image_processor.size["height"] == processor[0]
        assert image_processor.crop_size["height"] == processor[1]


def test_masked_lm_round_trip(tmp_path):
    model = build("PerceiverForMaskedLM")
    converted = load_transformers(save(model, tmp_path / "source"))
    fine_tune(converted)
    directory = export_transformers(converted, tmp_path / "exported")
    exported = transformers.PerceiverForMaskedLM.from_pretrained(directory)
    inputs = token_inputs(length=24)
    expected = keras_outputs(converted, inputs)["logits"]
    actual = reference(exported.eval(), inputs)["logits"]
    assert_close(actual, expected)


def test_text_perceiver_model_round_trip(tmp_path):
    from transformers.models.perceiver import modeling_perceiver as hf

    from test_hf_models import randomize
    from test_hf_models import tiny_config

    config = tiny_config()
    model = randomize(transformers.PerceiverModel(
        config, input_preprocessor=hf.PerceiverTextPreprocessor(config)))
    converted = load_transformers(save(model, tmp_path / "source"))
    fine_tune(converted)
    directory = export_transformers(converted, tmp_path / "exported")
    from perceiver_keras.conversion.hf_reference import reference_outputs

    inputs = token_inputs(length=24)
    assert_close(reference_outputs(directory, inputs)["last_hidden_state"],
                 keras_outputs(converted, inputs)["last_hidden_state"])


def native_text_classifier(**backbone_options):
    from perceiver_keras.layers.adapters import PerceiverTokenAdapter
    from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
    from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
        PerceiverTextClassifier,
    )

    options = dict(num_latents=6, latent_dim=24, num_self_attends_per_block=2,
                   num_self_attend_heads=3, num_cross_attend_heads=2,
                   num_blocks=2)
    options.update(backbone_options)
    backbone = PerceiverBackbone(
        inputs_shape=(24,), input_adapter=PerceiverTokenAdapter(262, 16, 24),
        **options)
    return PerceiverTextClassifier(backbone, num_classes=4)


def test_native_keras_model_with_tanh_gelu(tmp_path):
    """A model built here, DeepMind's tanh GELU: hidden_act='gelu_new'."""
    model = native_text_classifier(
        gelu_approximate=True, self_attention_qk_channels=12,
        cross_attention_qk_channels=12, self_attention_v_channels=24,
        cross_attention_v_channels=24,
    )
    fine_tune(model)
    directory = check_export(model, tmp_path, token_inputs(length=24),
                             "PerceiverForSequenceClassification")
    config = transformers.PerceiverConfig.from_pretrained(directory)
    assert config.hidden_act == "gelu_new"
    assert (config.qk_channels, config.v_channels) == (12, 24)


def test_channels_transformers_cannot_express(tmp_path):
    model = native_text_classifier(self_attention_qk_channels=12)
    with pytest.raises(ValueError, match="one `qk_channels`"):
        export_transformers(model, tmp_path / "x")
    model = native_text_classifier(num_cross_attends=2)
    with pytest.raises(ValueError, match="num_cross_attends"):
        export_transformers(model, tmp_path / "x")


def test_deepmind_options_are_refused(tmp_path):
    from perceiver_keras.conversion.deepmind_image import build_task

    encoder = dict(num_self_attends_per_block=1, z_index_dim=4,
                   num_z_channels=16, num_self_attend_heads=2, num_blocks=1)
    conv = build_task({"image_size": 32, "num_classes": 3,
                       "encoder": encoder,
                       "decoder": {"use_query_residual": True}})
    with pytest.raises(ValueError, match="conv_padding"):
        export_transformers(conv, tmp_path / "conv")
    learned = build_task({
        "image_size": 8, "num_classes": 3, "encoder": encoder,
        "input_preprocessor": {
            "prep_type": "conv1x1", "spatial_downsample": 1,
            "num_channels": 256, "position_encoding_type": "trainable",
            "trainable_position_encoding_kwargs": {"num_channels": 256},
            "project_pos_dim": 256},
    })
    with pytest.raises(ValueError, match="decoder_use_query_residual"):
        export_transformers(learned, tmp_path / "learned")
    assert not (tmp_path / "learned").exists()


def test_flow_scale_is_refused(tmp_path):
    from perceiver_keras.models.perceiver_io.perceiver_optical_flow import (
        PerceiverOpticalFlow,
    )

    model = build("PerceiverForOpticalFlow", train_size=[12, 16],
                  num_cross_attention_heads=1)
    converted = load_transformers(save(model, tmp_path / "source"))
    scaled = PerceiverOpticalFlow(converted.backbone, flow_scale_factor=20.0)
    with pytest.raises(ValueError, match="flow_scale_factor"):
        export_transformers(scaled, tmp_path / "x")



@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """transformers' multimodal autoencoder (tiny) and its conversion."""
    from test_hf_models import MULTIMODAL
    from test_hf_models import tiny_config

    source = build("PerceiverForMultimodalAutoencoding",
                   config=tiny_config(**MULTIMODAL))
    directory = tmp_path_factory.mktemp("multimodal_source")
    return load_transformers(save(source, directory))


def test_multimodal_autoencoder_round_trip(multimodal, tmp_path):
    from test_hf_models import multimodal_inputs

    converted = multimodal
    fine_tune(converted)
    directory = export_transformers(converted, tmp_path / "exported")
    exported = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(
        directory).eval()
    inputs = multimodal_inputs(np.arange(0, 40), np.arange(3, 9))
    expected = keras_outputs(converted, inputs)
    actual = reference(exported, inputs)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_close(actual[name], expected[name])


def test_multimodal_autoencoder_options_transformers_lacks_are_refused(
        multimodal, tmp_path):
    converted = multimodal
    config = converted.get_config()
    residual = type(converted).from_config(
        {**config, "decoder_use_query_residual": True})
    with pytest.raises(ValueError, match="decoder_use_query_residual"):
        export_transformers(residual, tmp_path / "residual")
    adapter = dict(config["input_adapter"])
    adapter["config"] = {**adapter["config"],
                         "mask_probs": {"audio": 0.0, "image": 0.0,
                                        "label": 0.5}}
    masked = type(converted).from_config({**config, "input_adapter": adapter})
    with pytest.raises(ValueError, match=r"input_adapter\.mask_probs\.label"):
        export_transformers(masked, tmp_path / "masked")
    assert not (tmp_path / "residual").exists()
    assert not (tmp_path / "masked").exists()
