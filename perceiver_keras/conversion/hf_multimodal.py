"""transformers' `PerceiverForMultimodalAutoencoding` as a
`PerceiverMultimodalAutoencoder`.

transformers' class, with its hard-coded settings:

- inputs `{"audio": [B, S, 1], "image": [B, T, 3, H, W], "label": [B, K]}`
  with `S = num_frames * audio_samples_per_frame`; audio cut into patches
  of `samples_per_patch` with 192 Fourier bands (max resolution `S`); video
  4x4 space-to-depth with 32 bands per axis at `(num_frames, image_size,
  image_size)`; the label one-hot; each modality padded with a learned
  vector to the widest + 4 channels; the label replaced by its mask token
  (probability 1; audio and image have mask tokens too, used with
  probability 0, i.e. never);
- one shared decoder cross-attention (one head, no query residual, Linear
  to `output_num_channels`) over per-modality queries padded to the widest
  + 2 channels: Fourier features of the chosen audio patches and pixels
  (grid `output_shape[1:]`) at DeepMind's subsampled positions
  `-1 + 2 * index / dim`, and a learned label query
  (`_label_trainable_num_channels` wide);
- a Linear per modality: audio samples, 3 colour channels, label logits.

transformers decodes only chosen points (`subsampled_output_points`; without
them its forward fails), so `run_inputs` requires them and calls our
`decode` with the same points. Our task takes channels-last video.
"""

import keras
import numpy as np

from perceiver_keras.conversion.hf_common import backbone_options
from perceiver_keras.conversion.hf_common import cross_attention_rows
from perceiver_keras.conversion.hf_common import encoder_rows
from perceiver_keras.conversion.hf_common import linear_rows
from perceiver_keras.conversion.hf_common import num_labels
from perceiver_keras.conversion.hf_common import task_on_backbone
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

MODALITIES = ("audio", "image", "label")
IMAGE_CHANNELS = 3
AUDIO_BANDS, IMAGE_BANDS = 192, 32
INPUT_PADDING, QUERY_PADDING = 4, 2
MASK_PROBS = {"audio": 0.0, "image": 0.0, "label": 1.0}
PREPROCESSOR = "perceiver.input_preprocessor"
DECODER = "perceiver.decoder"
POSTPROCESSOR = "perceiver.output_postprocessor.modalities"


def shapes(config):
    """The modalities' shapes (without batch) and the Fourier resolutions."""
    num_frames = config.get("num_frames", 16)
    audio = num_frames * config.get("audio_samples_per_frame", 1920)
    output_shape = tuple(config.get("output_shape", (1, 16, 224, 224)))
    if len(output_shape) != 4:
        raise ValueError(
            "`output_shape` must be (batch, frames, height, width). "
            f"Received: {output_shape}."
        )
    image_size = config.get("image_size", 56)
    inputs_shape = {
        "audio": (audio, 1),
        "image": (*output_shape[1:], IMAGE_CHANNELS),
        "label": (num_labels(config),),
    }
    resolutions = {"audio": (audio,),
                   "image": (num_frames, image_size, image_size)}
    return inputs_shape, resolutions


def build_task(architecture, config, processor_config=None, tensor_names=()):
    inputs_shape, resolutions = shapes(config)
    samples_per_patch = config.get("samples_per_patch", 16)
    adapter = PerceiverMultimodalAdapter(
        {
            "audio": PerceiverAudioAdapter(
                samples_per_patch=samples_per_patch, num_bands=AUDIO_BANDS,
                max_resolution=resolutions["audio"], name="audio_adapter",
            ),
            "image": PerceiverImageAdapter(
                prep_type="patches", spatial_downsample=4,
                temporal_downsample=1, num_bands=IMAGE_BANDS,
                max_resolution=resolutions["image"], name="image_adapter",
            ),
            "label": PerceiverLabelAdapter(name="label_adapter"),
        },
        min_padding_size=INPUT_PADDING, mask_probs=MASK_PROBS,
        name="input_adapter",
    )
    init_scale = config.get("initializer_range", 0.02)
    queries = PerceiverMultimodalQueries(
        {
            "audio": dict(
                position_encoding="fourier",
                index_dims=(inputs_shape["audio"][0] // samples_per_patch,),
                num_bands=AUDIO_BANDS, max_resolution=resolutions["audio"],
            ),
            "image": dict(
                position_encoding="fourier",
                index_dims=inputs_shape["image"][:-1],
                num_bands=IMAGE_BANDS, max_resolution=resolutions["image"],
            ),
            "label": dict(
                position_encoding="trainable", index_dims=(1,),
                num_channels=config.get("_label_trainable_num_channels",
                                        1024),
                init_scale=init_scale,
            ),
        },
        min_padding_size=QUERY_PADDING, point_positions="subsampled",
        name="decoder_queries",
    )
    token_shape = adapter.compute_output_shape(
        {name: (None, *shape) for name, shape in inputs_shape.items()}
    )[1:]
    backbone = PerceiverBackbone(
        inputs_shape=token_shape,
        input_adapter=PerceiverTokenInput(name="input_adapter"),
        **backbone_options(config),
    )
    return PerceiverMultimodalAutoencoder(
        backbone, input_adapter=adapter, decoder_queries=queries,
        inputs_shape=inputs_shape, **task_options(config),
    )


def task_options(config):
    return dict(
        image_output_channels=IMAGE_CHANNELS,
        decoder_output_channels=config.get("output_num_channels", 512),
        decoder_num_heads=1,
        decoder_use_query_residual=False,
    )


def new_task(cls, model, config, processor_config, kwargs):
    options = dict(
        input_adapter=model.input_adapter,
        decoder_queries=model.decoder_queries,
        inputs_shape=model.inputs_shape, **task_options(config),
    )
    return task_on_backbone(
        cls, model, {PerceiverMultimodalAutoencoder: (options, None)}, kwargs
    )


def weight_rows(task, architecture, config):
    adapter, queries = task.input_adapter, task.decoder_queries
    rows = []
    for name in MODALITIES:
        rows += [
            (f"{PREPROCESSOR}.padding.{name}",
             adapter.paddings[name].embeddings, None),
            (f"{PREPROCESSOR}.mask.{name}",
             adapter.mask_tokens[name].embeddings, None),
            (f"{DECODER}.padding.{name}", queries.paddings[name].embeddings,
             None),
        ]
    heads = {"audio": task.audio_head, "image": task.image_head,
             "label": task.label_head}
    return rows + [
        *encoder_rows(task.backbone, "perceiver."),
        (f"{DECODER}.modalities.label.decoder.output_position_encodings."
         "position_embeddings", queries.learned_queries["label"].embeddings,
         None),
        *cross_attention_rows(f"{DECODER}.decoder.decoding_cross_attention",
                              task.decoder.cross_attention),
        *linear_rows(f"{DECODER}.decoder.final_layer",
                     task.decoder.output_dense),
        *[row for name in MODALITIES
          for row in linear_rows(f"{POSTPROCESSOR}.{name}.classifier",
                                 heads[name])],
    ]


def run_inputs(task, architecture, inputs):
    """transformers' `inputs` and `subsampled_output_points` ->
    `{"logits/audio": [B, P_a * samples_per_patch], "logits/image":
    [B, P_i, 3], "logits/label": [B, K]}`."""
    modalities = inputs.get("inputs")
    points = inputs.get("subsampled_output_points")
    if not isinstance(modalities, dict) or not isinstance(points, dict) or (
        not {"audio", "image"} <= set(modalities) & set(points)
    ):
        raise ValueError(
            "`inputs` must hold `inputs/audio`, `inputs/image` (optionally "
            "`inputs/label`) and `subsampled_output_points/audio`, "
            "`subsampled_output_points/image` (transformers decodes only "
            f"chosen points). Received: {sorted(inputs)}."
        )
    video = np.transpose(np.asarray(modalities["image"], "float32"),
                         (0, 1, 3, 4, 2))
    x = {"image": video,
         "audio": np.asarray(modalities["audio"], "float32")}
    if modalities.get("label") is not None:
        x["label"] = np.asarray(modalities["label"], "float32")
    outputs = task.decode(
        task.encode(x),
        image_points=np.asarray(points["image"]),
        audio_points=np.asarray(points["audio"]),
    )
    return {f"logits/{name}": keras.ops.convert_to_numpy(value)
            for name, value in outputs.items()}


def example_inputs(task, architecture):
    """Random audio and video, and the first 64 pixels and audio patches
    (fewer if the grids are smaller)."""
    rng = np.random.default_rng(0)
    image_shape = task.inputs_shape["image"]
    video = rng.normal(size=(1, *image_shape)).astype("float32")
    counts = task.decoder_queries.num_queries()
    return {
        "inputs": {
            "audio": rng.normal(
                size=(1, *task.inputs_shape["audio"])).astype("float32"),
            "image": np.transpose(video, (0, 1, 4, 2, 3)),
            "label": np.zeros((1, *task.inputs_shape["label"]), "float32"),
        },
        "subsampled_output_points": {
            "audio": np.arange(min(64, counts["audio"])),
            "image": np.arange(min(64, counts["image"])),
        },
    }
