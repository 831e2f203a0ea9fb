"""Video + audio + label autoencoding with Perceiver IO."""

import math

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.multimodal import PerceiverMultimodalAdapter
from perceiver_keras.layers.multimodal import PerceiverMultimodalQueries
from perceiver_keras.layers.multimodal import PerceiverTokenInput
from perceiver_keras.layers.utils import deserialize_with_dtype
from perceiver_keras.models.input_validation import as_array_like
from perceiver_keras.models.input_validation import shapes_compatible
from perceiver_keras.models.input_validation import dtype_kind
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_task import query_decoder

MODALITIES = ("audio", "image", "label")  # sorted: the order of the tokens


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMultimodalAutoencoder(PerceiverTask):
    """Reconstructs video, audio and a label from one latent array.

    Inputs are a dict `{"image": [B, T, H, W, C], "audio": [B, S, C_a],
    "label": [B, K]}` ("label" may be left out: it is then all zeros, as in
    DeepMind's colab, which masks it anyway). `input_adapter` turns the
    modalities into one token array (per-modality padding vectors, mask
    tokens, sorted modality order); `backbone` encodes the tokens into
    latents; `decoder_queries` make one query per output point of every
    modality, decoded together by one cross-attention; a Dense per modality
    maps the results to pixels, audio samples and label logits.

    Outputs have the shapes of the inputs: `{"image": [B, T, H, W,
    image_output_channels], "audio": [B, S, C_a], "label": [B, K]}`.

    Decoding every output point at once needs memory for every query (the
    released model has 802,816 pixel queries); `reconstruct` decodes chunk by
    chunk, and `decode` decodes chosen points.

    Why the adapter sits in the task: `PerceiverBackbone` reads one `inputs`
    tensor, and a dict of modalities cannot be one tensor. The backbone is
    therefore a `PerceiverBackbone` over the adapter's tokens (`inputs_shape
    = (M, C)`, `input_adapter=PerceiverTokenInput()`), and the task runs
    `input_adapter -> backbone -> decoder`.

    Args:
        backbone: a `PerceiverBackbone` taking `[B, M, C]` tokens through a
            `PerceiverTokenInput`.
        input_adapter: a `PerceiverMultimodalAdapter` (or its config) with
            modalities "audio", "image", "label".
        decoder_queries: a `PerceiverMultimodalQueries` (or its config) with
            Fourier queries for "audio" (one per audio patch) and "image"
            (one per pixel, grid `(T, H, W)`), learned ones for "label".
        inputs_shape: dict of the modalities' shapes without the batch axis,
            e.g. `{"image": (16, 224, 224, 3), "audio": (30720, 1),
            "label": (700,)}`.
        image_output_channels: channels per reconstructed pixel.
        decoder_output_channels: width of the decoder's final Dense.
        decoder_num_heads, decoder_qk_channels, decoder_v_channels,
        decoder_use_query_residual: options of the decoder cross-attention.
        preprocessor: optional preprocessor applied by fit/predict.
    """

    backbone_cls = PerceiverBackbone
    preprocessor_cls = None
    config_arguments = (
        "input_adapter", "decoder_queries", "inputs_shape",
        "image_output_channels", "decoder_output_channels",
        "decoder_num_heads", "decoder_qk_channels", "decoder_v_channels",
        "decoder_use_query_residual",
    )
    default_learning_rate = 1e-4

    def __init__(
        self,
        backbone,
        input_adapter,
        decoder_queries,
        inputs_shape,
        image_output_channels=3,
        decoder_output_channels=512,
        decoder_num_heads=1,
        decoder_qk_channels=None,
        decoder_v_channels=None,
        decoder_use_query_residual=False,
        preprocessor=None,
        **kwargs,
    ):
        if isinstance(input_adapter, dict):
            input_adapter = deserialize_with_dtype(
                input_adapter, backbone.dtype_policy
            )
        if isinstance(decoder_queries, dict):
            decoder_queries = deserialize_with_dtype(
                decoder_queries, backbone.dtype_policy
            )
        inputs_shape = _check_inputs_shape(inputs_shape)
        _check_parts(backbone, input_adapter, decoder_queries, inputs_shape)
        dtype = backbone.dtype_policy
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.input_adapter = input_adapter
        self.decoder_queries = decoder_queries
        self.decoder = query_decoder(
            backbone, locals(), query_encoding=None,
            output_channels=decoder_output_channels,
        )
        audio_adapter = input_adapter.modalities["audio"]
        self.audio_head = PerceiverDense(
            audio_adapter.samples_per_patch, dtype=dtype, name="audio_head"
        )
        self.image_head = PerceiverDense(
            image_output_channels, dtype=dtype, name="image_head"
        )
        self.label_head = PerceiverDense(
            inputs_shape["label"][-1], dtype=dtype, name="label_head"
        )

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=inputs_shape[name], name=name)
            for name in MODALITIES
        }
        latents = backbone(self.input_adapter(inputs))
        decoded = self.decoder(latents, queries=self.decoder_queries(latents))
        outputs = self._postprocess(decoded, self.decoder_queries.num_queries())
        outputs = {
            "image": ops.reshape(
                outputs["image"],
                (-1, *inputs_shape["image"][:-1], image_output_channels),
            ),
            "audio": ops.reshape(
                outputs["audio"], (-1, *inputs_shape["audio"])
            ),
            "label": outputs["label"],
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self._store_config(locals())

    def _postprocess(self, decoded, num_queries):
        """Splits `[B, O, D]` by modality (sorted order) and applies heads.

        Returns DeepMind's layout: image `[B, P, C]`, audio `[B, P *
        samples_per_patch]`, label logits `[B, K]`.
        """
        parts, start = {}, 0
        for name, count in num_queries.items():
            parts[name] = decoded[:, start:start + count]
            start += count
        audio = self.audio_head(parts["audio"])
        return {
            "audio": ops.reshape(audio, (-1, audio.shape[1] * audio.shape[2])),
            "image": self.image_head(parts["image"]),
            "label": self.label_head(parts["label"])[:, 0],
        }

    def encode(self, inputs):
        """Latents `[B, N, D]` of a dict of modalities."""
        inputs = self.validate_inputs(inputs)
        return self.backbone(self.input_adapter(inputs))

    def decode(self, latents, image_points=None, audio_points=None):
        """Outputs for all output points or for chosen ones.

        A point's output does not depend on the other points decoded with
        it, so decoding in chunks gives the values of a full decode.

        Args:
            latents: from `encode`.
            image_points: flat (row-major over `(T, H, W)`) indices of the
                pixels to reconstruct; None reconstructs every pixel.
            audio_points: indices of the audio patches to reconstruct; None
                reconstructs every patch.

        Returns:
            dict: "image" `[B, P, C]`, "audio" `[B, P * samples_per_patch]`,
            "label" `[B, K]` (the label query is always decoded).
        """
        points = {}
        if image_points is not None:
            points["image"] = np.asarray(image_points)
        if audio_points is not None:
            points["audio"] = np.asarray(audio_points)
        queries = self.decoder_queries(latents, points=points)
        decoded = self.decoder(latents, queries=queries)
        return self._postprocess(
            decoded, self.decoder_queries.num_queries(points)
        )

    def reconstruct(self, inputs, num_chunks=128):
        """The whole clip, decoded in `num_chunks` chunks of output points.

        As DeepMind's colab: chunk `i` holds the `i`-th of `num_chunks`
        consecutive runs of pixels and of audio patches, so only one chunk's
        queries are in memory at a time. Unlike the colab, the inputs are
        encoded once. The result equals `predict`'s.

        Returns:
            NumPy arrays shaped like the model's outputs.
        """
        latents = self.encode(inputs)
        counts = self.decoder_queries.num_queries()
        if not 1 <= num_chunks <= min(counts["image"], counts["audio"]):
            raise ValueError(
                "`num_chunks` must be between 1 and the smaller of the pixel "
                f"and audio-patch counts {counts['image']}, "
                f"{counts['audio']}. Received: num_chunks={num_chunks}."
            )
        image_chunks = np.array_split(np.arange(counts["image"]), num_chunks)
        audio_chunks = np.array_split(np.arange(counts["audio"]), num_chunks)
        # To NumPy chunk by chunk, so no chunk's activations are kept alive.
        pieces = [
            {
                name: ops.convert_to_numpy(value)
                for name, value in self.decode(
                    latents, image_points, audio_points
                ).items()
            }
            for image_points, audio_points in zip(image_chunks, audio_chunks)
        ]
        image = np.concatenate([p["image"] for p in pieces], axis=1)
        audio = np.concatenate([p["audio"] for p in pieces], axis=1)
        return {
            "image": image.reshape(
                (-1, *self.inputs_shape["image"][:-1], image.shape[-1])
            ),
            "audio": audio.reshape((-1, *self.inputs_shape["audio"])),
            # The label query is the same in every chunk.
            "label": pieces[-1]["label"],
        }

    def validate_inputs(self, inputs):
        """A dict of the three modalities, or a ValueError naming the issue."""
        if not isinstance(inputs, dict):
            raise ValueError(
                "Inputs must be a dict with keys 'image', 'audio' and "
                f"optionally 'label'. Received: {type(inputs).__name__}."
            )
        unknown = sorted(set(inputs) - set(MODALITIES))
        missing = sorted({"image", "audio"} - set(inputs))
        if unknown or missing:
            raise ValueError(
                "Inputs must be a dict with keys 'image', 'audio' and "
                f"optionally 'label'. Received keys {sorted(inputs)}."
            )
        inputs = dict(inputs)
        if inputs.get("label") is None:
            batch = ops.shape(inputs["image"])[0]
            num_classes = self.inputs_shape["label"][-1]
            inputs["label"] = ops.zeros(
                (batch, num_classes), dtype=self.compute_dtype
            )
        for name in MODALITIES:
            x = inputs[name] = as_array_like(inputs[name], name)
            expected = (None,) + tuple(self.inputs_shape[name])
            if not shapes_compatible(tuple(x.shape), expected):
                raise ValueError(
                    f"`{name}` must have shape (batch, "
                    f"{', '.join(map(str, expected[1:]))}). Received: "
                    f"{name}.shape={tuple(x.shape)}."
                )
            if dtype_kind(x) != "float":
                raise ValueError(
                    f"`{name}` must hold float data. Received dtype "
                    f"{keras.backend.standardize_dtype(x.dtype)}."
                )
        return inputs

    def default_loss(self):
        # DeepMind's training losses.
        return {
            "image": keras.losses.MeanAbsoluteError(),
            "audio": keras.losses.MeanAbsoluteError(),
            "label": keras.losses.CategoricalCrossentropy(from_logits=True),
        }


def _check_inputs_shape(inputs_shape):
    if not isinstance(inputs_shape, dict) or set(inputs_shape) != set(
        MODALITIES
    ):
        raise ValueError(
            f"`inputs_shape` must be a dict with keys {list(MODALITIES)}. "
            f"Received: inputs_shape={inputs_shape!r}."
        )
    inputs_shape = {
        name: tuple(int(d) for d in inputs_shape[name]) for name in MODALITIES
    }
    ranks = {"image": 4, "audio": 2, "label": 1}
    for name, rank in ranks.items():
        if len(inputs_shape[name]) != rank:
            raise ValueError(
                f"`inputs_shape[{name!r}]` must have {rank} sizes. Received: "
                f"{inputs_shape[name]}."
            )
    return inputs_shape


def _check_parts(backbone, input_adapter, decoder_queries, inputs_shape):
    """The adapter, backbone and queries must fit together and the inputs."""
    for name, part, cls in (
        ("input_adapter", input_adapter, PerceiverMultimodalAdapter),
        ("decoder_queries", decoder_queries, PerceiverMultimodalQueries),
    ):
        if not isinstance(part, cls) or set(part.modalities) != set(
            MODALITIES
        ):
            raise ValueError(
                f"`{name}` must be a {cls.__name__} with modalities "
                f"{list(MODALITIES)}. Received: {part!r}."
            )
    tokens = input_adapter.compute_output_shape(
        {name: (None, *shape) for name, shape in inputs_shape.items()}
    )[1:]
    if tuple(backbone.inputs_shape) != tuple(tokens):
        raise ValueError(
            "`backbone.inputs_shape` must be the adapter's token shape "
            f"{tuple(tokens)}. Received: {tuple(backbone.inputs_shape)}."
        )
    if not isinstance(backbone.input_adapter, PerceiverTokenInput):
        raise ValueError(
            "`backbone` must read the adapter's tokens as they are: build "
            "it with `input_adapter=PerceiverTokenInput()`. Received: "
            f"{type(backbone.input_adapter).__name__}."
        )
    image_grid = tuple(inputs_shape["image"][:-1])
    audio_values = math.prod(inputs_shape["audio"])
    patch = input_adapter.modalities["audio"].samples_per_patch
    expected = {"image": image_grid, "audio": (audio_values // patch,)}
    for name, dims in expected.items():
        spec = decoder_queries.modalities[name]
        if spec["position_encoding"] != "fourier" or spec["index_dims"] != dims:
            raise ValueError(
                f"`decoder_queries` must query the {name} grid {dims} with "
                f"Fourier features. Received: {spec}."
            )
