"""DeepMind's video autoencoder (`video_autoencoding.ipynb`) -> Keras.

DeepMind's model: `MultimodalPreprocessor` (audio patches, image patches,
one-hot label; padding vectors and mask tokens per modality),
`PerceiverEncoder`, `MultimodalDecoder` (per-modality queries, one shared
cross-attention) and `MultimodalPostprocessor` (a Linear per modality).
Keras: `PerceiverMultimodalAutoencoder` with a `PerceiverMultimodalAdapter`,
a `PerceiverBackbone` over its tokens and `PerceiverMultimodalQueries`.
"""

import numpy as np
from keras import ops

from perceiver_keras.conversion.common import cross_attention_rows
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.deepmind import adapter_rows
from perceiver_keras.conversion.deepmind import backbone_options
from perceiver_keras.conversion.deepmind import check_keys
from perceiver_keras.conversion.deepmind import encoder_rows
from perceiver_keras.conversion.deepmind import require
from perceiver_keras.conversion.deepmind_flow import fourier_options
from perceiver_keras.conversion.deepmind_flow import image_adapter_options
from perceiver_keras.conversion.deepmind_flow import with_position_options
from perceiver_keras.layers.adapters import PerceiverImageAdapter
from perceiver_keras.layers.multimodal import PerceiverAudioAdapter
from perceiver_keras.layers.multimodal import PerceiverLabelAdapter
from perceiver_keras.layers.multimodal import PerceiverMultimodalAdapter
from perceiver_keras.layers.multimodal import PerceiverMultimodalQueries
from perceiver_keras.layers.multimodal import PerceiverTokenInput
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_multimodal_autoencoder import (
    PerceiverMultimodalAutoencoder,
)

IMAGE_CHANNELS = 3
AUDIO_CHANNELS = 1

TOP_LEVEL_KEYS = (
    "num_frames", "audio_samples_per_frame", "image_size", "num_classes",
    "input_preprocessor", "output_postprocessor", "encoder", "decoder",
)
MODALITY_NAMES = ("audio", "image", "label")
INPUT_PREPROCESSOR_KEYS = ("min_padding_size", "mask_probs", "modalities",
                           "name")
AUDIO_PREPROCESSOR_KEYS = (
    "prep_type", "samples_per_patch", "position_encoding_type",
    "fourier_position_encoding_kwargs", "trainable_position_encoding_kwargs",
    "n_extra_pos_mlp", "concat_or_add_pos", "project_pos_dim", "name",
)
DECODER_KEYS = (
    "num_outputs", "output_num_channels", "use_query_residual",
    "concat_preprocessed_input", "min_padding_size", "num_heads",
    "qk_channels", "v_channels", "name",
)
# Only the queries of the per-modality decoders are used; their attention
# arguments (`num_z_channels`, `output_num_channels`, ...) build nothing.
MODALITY_DECODER_KEYS = (
    "output_index_dims", "output_shape", "num_z_channels",
    "output_num_channels", "use_query_residual", "position_encoding_type",
    "fourier_position_encoding_kwargs", "trainable_position_encoding_kwargs",
    "concat_preprocessed_input", "num_classes", "name",
)


def _image_size(deepmind_config):
    size = deepmind_config["image_size"]
    return (size, size) if isinstance(size, int) else tuple(size)


def inputs_shape(deepmind_config):
    """Shapes of the modalities (without batch) the model reads."""
    num_frames = deepmind_config["num_frames"]
    audio = num_frames * deepmind_config["audio_samples_per_frame"]
    return {
        "audio": (audio, AUDIO_CHANNELS),
        "image": (num_frames, *_image_size(deepmind_config), IMAGE_CHANNELS),
        "label": (deepmind_config["num_classes"],),
    }


def _audio_adapter(cfg, where):
    check_keys(cfg, AUDIO_PREPROCESSOR_KEYS, where)
    require(cfg, "prep_type", ("patches",), where)
    require(cfg, "n_extra_pos_mlp", (0,), where)
    position = require(
        cfg, "position_encoding_type", ("fourier", "trainable"), where
    )
    options = dict(
        samples_per_patch=cfg.get("samples_per_patch", 96),
        position_encoding=position,
        concat_or_add_pos=cfg.get("concat_or_add_pos", "concat"),
        project_pos_dim=cfg.get("project_pos_dim", -1),
    )
    return PerceiverAudioAdapter(
        **with_position_options(options, cfg, where), name="audio_adapter"
    )


def build_input_adapter(preprocessor_config):
    """`PerceiverMultimodalAdapter` for DeepMind's `MultimodalPreprocessor`."""
    where = "input_preprocessor"
    check_keys(preprocessor_config, INPUT_PREPROCESSOR_KEYS, where)
    modalities = preprocessor_config["modalities"]
    check_keys(modalities, MODALITY_NAMES, f"{where}.modalities")
    check_keys(modalities["label"], (), f"{where}.modalities.label")
    image = PerceiverImageAdapter(
        **image_adapter_options(modalities["image"],
                                f"{where}.modalities.image"),
        prep_type="patches",
        name="image_adapter",
    )
    return PerceiverMultimodalAdapter(
        {
            "audio": _audio_adapter(modalities["audio"],
                                    f"{where}.modalities.audio"),
            "image": image,
            "label": PerceiverLabelAdapter(name="label_adapter"),
        },
        min_padding_size=preprocessor_config.get("min_padding_size", 2),
        mask_probs=preprocessor_config.get("mask_probs"),
        name="input_adapter",
    )


def _query_spec(cfg, index_dims, where):
    check_keys(cfg, MODALITY_DECODER_KEYS, where)
    require(cfg, "concat_preprocessed_input", (False,), where)
    position = require(
        cfg, "position_encoding_type", ("fourier", "trainable"), where
    )
    given = cfg.get("output_index_dims") or cfg.get("output_shape")
    if given is not None and tuple(given)[-len(index_dims):] != index_dims:
        raise ValueError(
            f"`{where}` must decode the input grid {index_dims}. Received: "
            f"{given}."
        )
    if position == "trainable":
        trainable = cfg.get("trainable_position_encoding_kwargs", {})
        return dict(
            position_encoding="trainable",
            index_dims=index_dims,
            num_channels=trainable["num_channels"],
            init_scale=trainable.get("init_scale", 0.02),
        )
    options = fourier_options(cfg.get("fourier_position_encoding_kwargs", {}),
                              where)
    return dict(position_encoding="fourier", index_dims=index_dims, **options)


def build_decoder_queries(decoder_config, shapes, samples_per_patch):
    """`PerceiverMultimodalQueries` for DeepMind's `MultimodalDecoder`."""
    modalities = decoder_config["modalities"]
    check_keys(modalities, MODALITY_NAMES, "decoder.modalities")
    index_dims = {
        "audio": (int(np.prod(shapes["audio"])) // samples_per_patch,),
        "image": tuple(shapes["image"][:-1]),
        "label": (1,),
    }
    return PerceiverMultimodalQueries(
        {
            name: _query_spec(modalities[name], index_dims[name],
                              f"decoder.modalities.{name}")
            for name in MODALITY_NAMES
        },
        min_padding_size=decoder_config.get("min_padding_size", 2),
        name="decoder_queries",
    )


def _check_postprocessors(cfg, deepmind_config, samples_per_patch):
    check_keys(cfg, MODALITY_NAMES, "output_postprocessor")
    checks = [
        ("audio", "samples_per_patch", samples_per_patch),
        ("label", "num_classes", deepmind_config["num_classes"]),
    ]
    for name, key, expected in checks:
        check_keys(cfg[name], (key,), f"output_postprocessor.{name}")
        if cfg[name].get(key, expected) != expected:
            raise ValueError(
                f"`output_postprocessor.{name}.{key}` must equal the input's "
                f"{expected} to reconstruct it. Received: {cfg[name][key]}."
            )
    check_keys(cfg["image"], ("num_outputs",), "output_postprocessor.image")
    return cfg["image"]["num_outputs"]


def build_task(deepmind_config):
    """A randomly initialised `PerceiverMultimodalAutoencoder`."""
    check_keys(deepmind_config, TOP_LEVEL_KEYS, "multimodal config")
    decoder = deepmind_config["decoder"]
    check_keys(decoder, DECODER_KEYS + ("modalities",), "decoder")
    require(decoder, "concat_preprocessed_input", (False,), "decoder")
    shapes = inputs_shape(deepmind_config)
    adapter = build_input_adapter(deepmind_config["input_preprocessor"])
    samples_per_patch = adapter.modalities["audio"].samples_per_patch
    image_channels = _check_postprocessors(
        deepmind_config["output_postprocessor"], deepmind_config,
        samples_per_patch,
    )
    token_shape = adapter.compute_output_shape(
        {name: (None, *shape) for name, shape in shapes.items()}
    )[1:]
    backbone = PerceiverBackbone(
        inputs_shape=token_shape,
        input_adapter=PerceiverTokenInput(name="input_adapter"),
        **backbone_options(deepmind_config["encoder"]),
    )
    return PerceiverMultimodalAutoencoder(
        backbone,
        input_adapter=adapter,
        decoder_queries=build_decoder_queries(decoder, shapes,
                                              samples_per_patch),
        inputs_shape=shapes,
        image_output_channels=image_channels,
        decoder_output_channels=decoder.get("output_num_channels", 512),
        decoder_num_heads=decoder.get("num_heads", 1),
        decoder_qk_channels=decoder.get("qk_channels"),
        decoder_v_channels=decoder.get("v_channels"),
        decoder_use_query_residual=decoder.get("use_query_residual", False),
    )


def weight_rows(task, deepmind_config):
    """The conversion table, in DeepMind's parameter names.

    The modality pre- and post-processors and the label's query decoder are
    built outside the multimodal modules in the colab, so their parameters
    sit at the top level (`image_preprocessor/...`, `audio_postprocessor/
    ...`, `classification_decoder/...`).
    """
    adapter, queries = task.input_adapter, task.decoder_queries
    preprocessor_config = deepmind_config["input_preprocessor"]
    preprocessor = preprocessor_config.get("name", "multimodal_preprocessor")
    decoder = deepmind_config["decoder"].get("name", "multimodal_decoder")
    audio_scope, image_scope = (
        preprocessor_config["modalities"][name].get(
            "name", f"{name}_preprocessor"
        )
        for name in ("audio", "image")
    )
    rows = [
        *adapter_rows(audio_scope, adapter.modalities["audio"]),
        *adapter_rows(image_scope, adapter.modalities["image"]),
    ]
    for name in MODALITY_NAMES:
        rows.append((f"{preprocessor}/{name}_padding/pos_embs",
                     adapter.paddings[name].embeddings, None))
        if name in adapter.mask_tokens:
            rows.append((f"{preprocessor}/{name}_mask_token/pos_embs",
                         adapter.mask_tokens[name].embeddings, None))
    rows += encoder_rows(task.backbone, deepmind_config["encoder"])
    rows.append((
        "classification_decoder/~/basic_decoder/~/trainable_position_encoding"
        "/pos_embs",
        queries.learned_queries["label"].embeddings,
        None,
    ))
    for name in MODALITY_NAMES:
        rows.append((f"{decoder}/~decoder_query/{name}_padding/pos_embs",
                     queries.paddings[name].embeddings, None))
    rows += [
        *cross_attention_rows(f"{decoder}/~/basic_decoder/cross_attention",
                              task.decoder.cross_attention),
        *dense_rows(f"{decoder}/~/basic_decoder/output",
                    task.decoder.output_dense),
        *dense_rows("audio_postprocessor/linear", task.audio_head),
        *dense_rows("projection_postprocessor/linear", task.image_head),
        *dense_rows("classification_postprocessor/linear", task.label_head),
    ]
    return rows


def run_inputs(task, inputs):
    """The fixture's outputs: a full decode and one chunk of output points.

    Inputs: "images" `[B, T, H, W, 3]`, "audio" `[B, S, 1]`,
    "chunk_image_points", "chunk_audio_points". Outputs in DeepMind's
    layout: "image" `[B, T*H*W, 3]`, "audio" `[B, S]`, "label" `[B, K]`,
    and the same for the chunk under "chunk_*".
    """
    modalities = {"image": inputs["images"], "audio": inputs["audio"]}
    full = task.predict_on_batch(modalities)
    batch = len(inputs["images"])
    image_channels = full["image"].shape[-1]
    outputs = {
        "image": np.reshape(full["image"], (batch, -1, image_channels)),
        "audio": np.reshape(full["audio"], (batch, -1)),
        "label": np.asarray(full["label"]),
    }
    chunk = task.decode(
        task.encode(modalities),
        image_points=inputs["chunk_image_points"],
        audio_points=inputs["chunk_audio_points"],
    )
    for name, value in chunk.items():
        outputs[f"chunk_{name}"] = ops.convert_to_numpy(value)
    return outputs
