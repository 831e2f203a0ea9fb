"""Writes a Keras Perceiver as a transformers `save_pretrained` directory.

`export_transformers(model, directory)` writes `config.json` (a
`PerceiverConfig` naming the transformers class) and `model.safetensors`
(plus `preprocessor_config.json` for image classifiers), so that
`PerceiverFor....from_pretrained(directory)` reproduces the Keras outputs.

The weights are named by the same tables that load transformers
checkpoints (`weight_rows` of each class's module), read backwards. The
configuration is read back from the model, and everything transformers'
classes cannot express is refused with a ValueError naming the option:
transformers hard-codes most of each class's preprocessor and decoder, so a
model exports only if it has those settings (e.g. the conv stem's
`conv_padding="pad_then_valid_pool"`, a query residual in classification
decoders, no
flow scale). DeepMind's tanh GELU is expressible (`hidden_act="gelu_new"`).

Exported: `PerceiverTextClassifier`, `PerceiverMaskedLM`,
`PerceiverImageClassifier` (learned, Fourier, conv), `PerceiverOpticalFlow`,
`PerceiverMultimodalAutoencoder` (with transformers' hard-coded adapters,
queries and decoder) and `PerceiverBackbone` (bare or text input, as `PerceiverModel`).
Training-only options (dropout) are not exported. transformers does not
mask the masked LM's decoder queries: a model with DeepMind's
`decoder_query_mask=True` exports, and only its logits at padded positions
(which mean nothing) differ; models converted from transformers have
`decoder_query_mask=False` and round-trip exactly.
"""

import json
import os

import numpy as np

from perceiver_keras.conversion.common import write_directory_atomically
from perceiver_keras.conversion.hf import architecture_module
from perceiver_keras.conversion.hf_common import conv_kernel
from perceiver_keras.conversion.hf_common import transpose
from perceiver_keras.layers.adapters import PerceiverArrayAdapter
from perceiver_keras.layers.adapters import PerceiverImageAdapter
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.layers.flow import PATCH_SIZE
from perceiver_keras.layers.flow import PerceiverFlowAdapter

# Each transform of the loading tables and the one that undoes it.
INVERSE = {
    None: lambda w: w,
    transpose: transpose,
    conv_kernel: lambda w: w.transpose(3, 2, 0, 1),
}
GELU_NAMES = {False: "gelu", True: "gelu_new"}


def _refuse(option, value, expected, why):
    raise ValueError(
        f"Cannot export to transformers: `{option}` must be {expected} "
        f"({why}). Received: {option}={value!r}."
    )


def _require(option, value, expected, why):
    if value != expected:
        _refuse(option, value, repr(expected), why)


# --- encoder -----------------------------------------------------------------


def _channel_options(backbone, kv_width):
    """`qk_channels`, `v_channels`, `cross_attention_shape_for_attention`
    giving the backbone's resolved channel counts in transformers."""
    latent = backbone.latent_dim
    cross_qk = backbone.cross_attention_qk_channels or kv_width
    cross_v = backbone.cross_attention_v_channels or cross_qk
    self_qk = backbone.self_attention_qk_channels or latent
    self_v = backbone.self_attention_v_channels or self_qk
    wanted = (cross_qk, cross_v, self_qk, self_v)
    for qk in (None, self_qk):
        for v in (None, self_v):
            for shape in ("kv", "q"):
                t_cross_qk = qk or (kv_width if shape == "kv" else latent)
                t_cross_v = v or t_cross_qk
                t_self_qk = qk or latent
                t_self_v = v or t_self_qk
                if (t_cross_qk, t_cross_v, t_self_qk, t_self_v) == wanted:
                    if t_self_v != latent:
                        break  # transformers' self-attention outputs v
                    return dict(qk_channels=qk, v_channels=v,
                                cross_attention_shape_for_attention=shape)
    raise ValueError(
        "Cannot export to transformers: it uses one `qk_channels` and one "
        "`v_channels` for the cross-attention and every self-attention, "
        "and self-attention values as wide as the latents. Received "
        f"cross-attention qk/v {cross_qk}/{cross_v}, self-attention qk/v "
        f"{self_qk}/{self_v}, latent_dim={latent}."
    )


def encoder_config(backbone):
    """`PerceiverConfig` fields of a backbone's encoder."""
    _require("num_cross_attends", backbone.num_cross_attends, 1,
             "transformers' encoder reads the input once")
    return dict(
        model_type="perceiver",
        num_latents=backbone.num_latents,
        d_latents=backbone.latent_dim,
        num_blocks=backbone.num_blocks,
        num_self_attends_per_block=backbone.num_self_attends_per_block,
        num_self_attention_heads=backbone.num_self_attend_heads,
        num_cross_attention_heads=backbone.num_cross_attend_heads,
        self_attention_widening_factor=backbone.self_attend_widening_factor,
        cross_attention_widening_factor=backbone.cross_attend_widening_factor,
        use_query_residual=backbone.use_query_residual,
        hidden_act=GELU_NAMES[bool(backbone.gelu_approximate)],
        attention_probs_dropout_prob=backbone.attention_dropout,
        initializer_range=backbone.latent_init_scale,
        **_channel_options(backbone, backbone.token_width),
    )


def _text_fields(backbone):
    adapter = backbone.input_adapter
    _require("inputs_shape", tuple(backbone.inputs_shape),
             (adapter.max_sequence_length,),
             "transformers' text models read max_position_embeddings ids")
    return dict(vocab_size=adapter.vocabulary_size, d_model=adapter.hidden_dim,
                max_position_embeddings=adapter.max_sequence_length)


def _labels(model, num_classes):
    saved = (getattr(model, "transformers_config", None) or {}).get(
        "id2label") or {}
    if len(saved) != num_classes:
        saved = {str(i): f"LABEL_{i}" for i in range(num_classes)}
    id2label = {str(k): v for k, v in saved.items()}
    return dict(id2label=id2label,
                label2id={v: int(k) for k, v in id2label.items()})


def _check_classification_decoder(task):
    latent = task.backbone.latent_dim
    why = "transformers' classification decoder is fixed"
    _require("pooling", task.pooling, "query", why)
    _require("activation", getattr(task.activation, "__name__", None),
             "linear", "transformers outputs logits")
    _require("decoder_num_heads", task.decoder_num_heads, 1, why)
    _require("decoder_use_query_residual", task.decoder_use_query_residual,
             True, why)
    _require("decoder_query_channels", task.decoder_query_channels or latent,
             latent, why + ": queries as wide as the latents")
    qk = task.decoder_qk_channels or latent
    _require("decoder_qk_channels", qk, latent, why)
    _require("decoder_v_channels", task.decoder_v_channels or qk, latent, why)


# --- per class ---------------------------------------------------------------


def _fourier(adapter, num_bands, max_resolution):
    return (adapter.position_encoding == "fourier"
            and adapter.num_bands == num_bands
            and tuple(adapter.max_resolution or ()) == max_resolution
            and adapter.concat_pos and not adapter.sine_only
            and adapter.project_pos_dim is None
            and adapter.concat_or_add_pos == "concat")


def _image_architecture(backbone):
    """Which transformers image classifier an image adapter is, if any."""
    adapter = backbone.input_adapter
    if not isinstance(adapter, PerceiverImageAdapter):
        _refuse("input_adapter", type(adapter).__name__,
                "a PerceiverImageAdapter", "transformers' image classifiers")
    height, width, _ = backbone.inputs_shape
    if adapter.prep_type == "conv":
        _require("conv_padding", adapter.conv_padding, "pad_then_valid_pool",
                 "transformers pads the conv stem 3 on every side, then "
                 "max-pools without padding")
        if adapter.num_channels == 64 and _fourier(adapter, 64, (56, 56)):
            return "PerceiverForImageClassificationConvProcessing", {}
    elif adapter.prep_type == "pixels" and adapter.spatial_downsample == 1:
        if _fourier(adapter, 64, (224, 224)):
            return "PerceiverForImageClassificationFourier", {}
    elif (adapter.prep_type == "conv1x1" and adapter.spatial_downsample == 1
          and adapter.num_channels == 256
          and adapter.position_encoding == "trainable"
          and adapter.position_channels == 256
          and adapter.project_pos_dim == 256
          and adapter.concat_or_add_pos == "concat" and height == width):
        return ("PerceiverForImageClassificationLearned",
                dict(image_size=height))
    raise ValueError(
        "Cannot export to transformers: the image adapter must be one of "
        "transformers' three (conv1x1 to 256 + 256 learned positions "
        "projected to 256; pixels + 64 Fourier bands at 224; conv stem to "
        f"64 + 64 Fourier bands at 56). Received: {_options(adapter)}."
    )


def _options(layer):
    """A layer's config without the generic keys, for messages."""
    generic = ("name", "trainable", "dtype")
    return {k: v for k, v in layer.get_config().items() if k not in generic}


def _processor_config(task):
    preprocessor = getattr(task, "preprocessor", None)
    converter = getattr(preprocessor, "image_converter", None)
    if converter is None:
        return None
    height, width = converter.image_size
    fraction = converter.crop_fraction
    crop = (round(height / fraction), round(width / fraction)) if (
        fraction) else (height, width)
    return {
        "image_processor_type": "PerceiverImageProcessor",
        "size": {"height": height, "width": width},
        "crop_size": {"height": crop[0], "width": crop[1]},
        "do_center_crop": fraction is not None,
        "do_resize": True, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [m / 255 for m in converter.mean],
        "image_std": [s / 255 for s in converter.std],
    }


def describe(model):
    """`(architecture, config fields, processor config)` of a Keras model."""
    from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
    from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
        PerceiverImageClassifier,
    )
    from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
    from perceiver_keras.models.perceiver_io.perceiver_multimodal_autoencoder import (  # noqa: E501
        PerceiverMultimodalAutoencoder,
    )
    from perceiver_keras.models.perceiver_io.perceiver_optical_flow import (
        PerceiverOpticalFlow,
    )
    from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
        PerceiverTextClassifier,
    )

    if isinstance(model, PerceiverBackbone):
        config = encoder_config(model)
        adapter = model.input_adapter
        if isinstance(adapter, PerceiverTokenAdapter):
            return "PerceiverModel", {**config, **_text_fields(model)}, None
        if type(adapter) is PerceiverArrayAdapter and (
            adapter.position_encoding is None
            and len(model.inputs_shape) == 2
        ):
            return "PerceiverModel", {**config,
                                      "d_model": model.inputs_shape[-1]}, None
        _refuse("input_adapter", type(adapter).__name__,
                "a PerceiverTokenAdapter or no adapter",
                "a bare PerceiverModel keeps no other preprocessor in its "
                "config")
    config = encoder_config(model.backbone)
    if isinstance(model, PerceiverTextClassifier):
        _check_classification_decoder(model)
        return "PerceiverForSequenceClassification", {
            **config, **_text_fields(model.backbone),
            **_labels(model, model.num_classes)}, None
    if isinstance(model, PerceiverImageClassifier):
        _check_classification_decoder(model)
        architecture, fields = _image_architecture(model.backbone)
        return architecture, {**config, **fields,
                              **_labels(model, model.num_classes)}, (
            _processor_config(model))
    if isinstance(model, PerceiverMaskedLM):
        text = _text_fields(model.backbone)
        why = "transformers' masked-LM decoder is fixed"
        for option, expected in [
            ("decoder_num_heads", 8), ("decoder_qk_channels", 256),
            ("decoder_v_channels", text["d_model"]),
            ("decoder_query_channels", text["d_model"]),
            ("decoder_use_query_residual", False),
            ("decoder_output_channels", None),
        ]:
            value = getattr(model, option)
            if option == "decoder_query_channels":
                value = value or text["d_model"]
            _require(option, value, expected, why)
        return "PerceiverForMaskedLM", {**config, **text}, None
    if isinstance(model, PerceiverOpticalFlow):
        return "PerceiverForOpticalFlow", {**config, **_flow_fields(model)}, (
            None)
    if isinstance(model, PerceiverMultimodalAutoencoder):
        return "PerceiverForMultimodalAutoencoding", {
            **config, **_multimodal_fields(model)}, None
    raise ValueError(
        "Cannot export to transformers: expected a PerceiverBackbone, "
        "PerceiverTextClassifier, PerceiverMaskedLM, PerceiverImageClassifier"
        ", PerceiverOpticalFlow or PerceiverMultimodalAutoencoder. Received: "
        f"{type(model).__name__}."
    )


def _plain_config(layer):
    """A layer's config without names, dtypes and build records, which do
    not change what it computes."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in (
                "name", "trainable", "dtype", "build_config", "module",
                "registered_name", "autocast", "activity_regularizer")}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return clean(layer.get_config())


def _first_difference(actual, expected, path):
    if isinstance(actual, dict) and isinstance(expected, dict):
        for key in sorted(set(actual) | set(expected)):
            found = _first_difference(actual.get(key), expected.get(key),
                                      f"{path}.{key}")
            if found:
                return found
        return None
    return None if actual == expected else (path, actual, expected)


def _multimodal_fields(task):
    """transformers' config fields read from the task, after checking that
    the task is the one `hf_multimodal` builds from them (transformers
    hard-codes the adapters, queries and decoder; see that module)."""
    from perceiver_keras.conversion import hf_multimodal

    shapes = task.inputs_shape
    frames, height, width, _ = shapes["image"]
    adapter = _plain_config(task.input_adapter)["modalities"]
    queries = _plain_config(task.decoder_queries)["modalities"]
    fields = dict(
        num_frames=frames,
        audio_samples_per_frame=shapes["audio"][0] // frames,
        samples_per_patch=adapter["audio"]["config"].get("samples_per_patch"),
        image_size=(adapter["image"]["config"].get("max_resolution")
                    or [None, None])[-1],
        output_shape=[1, frames, height, width],
        output_num_channels=task.decoder_output_channels,
        _label_trainable_num_channels=queries["label"].get("num_channels"),
        **_labels(task, shapes["label"][0]),
    )
    try:
        expected = hf_multimodal.build_task(
            "PerceiverForMultimodalAutoencoding",
            {**encoder_config(task.backbone), **fields})
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(
            "Cannot export to transformers: the multimodal autoencoder's "
            "shapes are not those of transformers' "
            f"PerceiverForMultimodalAutoencoding ({e})."
        ) from e
    why = "transformers' multimodal autoencoder is fixed"
    for part in ("input_adapter", "decoder_queries"):
        found = _first_difference(_plain_config(getattr(task, part)),
                                  _plain_config(getattr(expected, part)), part)
        if found:
            _refuse(found[0], found[1], repr(found[2]), why)
    for option in ("image_output_channels", "decoder_num_heads",
                   "decoder_qk_channels", "decoder_v_channels",
                   "decoder_use_query_residual"):
        _require(option, getattr(task, option), getattr(expected, option),
                 why)
    _require("backbone inputs_shape", tuple(task.backbone.inputs_shape),
             tuple(expected.backbone.inputs_shape), why)
    return fields


def _flow_fields(task):
    adapter = task.backbone.input_adapter
    _, height, width, channels = task.backbone.inputs_shape
    why = "transformers' optical-flow model is fixed"
    if not isinstance(adapter, PerceiverFlowAdapter):
        _refuse("input_adapter", type(adapter).__name__,
                "a PerceiverFlowAdapter", why)
    if adapter.inputs_are_patches:
        channels //= PATCH_SIZE**2
    _require("frame channels", channels, 3, why)
    _require("adapter num_channels", adapter.num_channels, 64, why)
    if not _fourier(adapter, 64, (height, width)):
        _refuse("input_adapter Fourier options", _options(adapter),
                "64 bands at the frame size", why)
    for option, expected in [
        ("output_channels", 2), ("rescale_factor", 100.0),
        ("flow_scale_factor", 1.0), ("decoder_num_heads", 1),
        ("decoder_use_query_residual", False),
    ]:
        _require(option, getattr(task, option), expected,
                 why + (": it does not scale the flow"
                        if option == "flow_scale_factor" else ""))
    latent = task.backbone.latent_dim
    qk = task.decoder_qk_channels or latent
    _require("decoder_qk_channels", qk, latent, why)
    _require("decoder_v_channels", task.decoder_v_channels or qk, latent, why)
    return dict(train_size=[height, width])


# --- writing -----------------------------------------------------------------


def model_tensors(model, architecture, config):
    """`{transformers name: array}` from the loading table, inverted."""
    module = architecture_module(architecture)
    tensors = {}
    for name, variable, transform in module.weight_rows(
        model, architecture, config
    ):
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy")
                           else variable.value, dtype="float32")
        tensors[name] = np.ascontiguousarray(INVERSE[transform](value))
    for name in list(tensors):  # torch's BatchNorm step counter
        if name.endswith(".running_mean"):
            prefix = name[: -len("running_mean")]
            tensors[f"{prefix}num_batches_tracked"] = np.zeros((), "int64")
    return tensors


_SAFETENSORS_NAMES = {"float32": "F32", "int64": "I64"}


def write_safetensors(tensors, path):
    """A `.safetensors` file (transformers' `format: pt` metadata)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, value in tensors.items():
        size = value.nbytes
        header[name] = {"dtype": _SAFETENSORS_NAMES[value.dtype.name],
                        "shape": list(value.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for value in tensors.values():
            f.write(value.astype(value.dtype.newbyteorder("<")).tobytes())


def export_transformers(model, directory):
    """Writes `model` as a transformers directory (atomically).

    Raises:
        ValueError: `model` has an option transformers cannot express; the
            message names it.
    """
    architecture, config, processor = describe(model)
    config = {**config, "architectures": [architecture]}
    tensors = model_tensors(model, architecture, config)

    def write(staging):
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if processor is not None:
            with open(os.path.join(staging, "preprocessor_config.json"),
                      "w") as f:
                json.dump(processor, f, indent=2, sort_keys=True)
        write_safetensors(tensors, os.path.join(staging, "model.safetensors"))

    directory = write_directory_atomically(directory, write)
    return directory
