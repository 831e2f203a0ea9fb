"""Several modalities in one token array, and decoder queries for each.

DeepMind's multimodal autoencoder reads video, audio and a label at once:
each modality becomes tokens of its own width, is padded to a common width
with a learned vector per modality, may be replaced by a learned mask token,
and the modalities are concatenated in sorted name order. The decoder
queries are built the same way from per-modality queries (Fourier features
of each output grid, or learned), so one cross-attention decodes them all.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.adapters import PerceiverArrayAdapter
from perceiver_keras.layers.position_encoding import TrainablePositionEncoding
from perceiver_keras.layers.position_encoding import fourier_channels
from perceiver_keras.layers.position_encoding import fourier_features
from perceiver_keras.layers.position_encoding import (
    fourier_features_from_positions,
)
from perceiver_keras.layers.position_encoding import linear_positions
from perceiver_keras.layers.position_encoding import subsampled_positions
from perceiver_keras.layers.utils import deserialize_with_dtype


def _deserialize_layers(layers, dtype):
    return {
        name: deserialize_with_dtype(layer, dtype) if isinstance(layer, dict)
        else layer
        for name, layer in layers.items()
    }


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverAudioAdapter(PerceiverArrayAdapter):
    """Audio `[B, S, C]` to tokens of `samples_per_patch` consecutive values.

    All values of an example are read in order and cut into patches
    (DeepMind's `AudioPreprocessor`), then positions are attached as by
    `PerceiverArrayAdapter` (1-D over the patches).

    Args:
        samples_per_patch: values per token; `S * C` must be divisible by it.
        Remaining arguments: see `PerceiverArrayAdapter`.
    """

    def __init__(self, samples_per_patch=96, **kwargs):
        super().__init__(**kwargs)
        self.samples_per_patch = samples_per_patch

    def transform_shape(self, input_shape):
        values = math.prod(input_shape[1:])
        if values % self.samples_per_patch:
            raise ValueError(
                "The audio values per example must be divisible by "
                f"`samples_per_patch`={self.samples_per_patch}. Received "
                f"inputs of shape {tuple(input_shape)}."
            )
        num_patches = values // self.samples_per_patch
        return (input_shape[0], num_patches, self.samples_per_patch)

    def transform(self, inputs, training=None):
        num_patches = self.transform_shape(inputs.shape)[1]
        return ops.reshape(inputs, (-1, num_patches, self.samples_per_patch))

    @property
    def supports_padding_mask(self):
        return False

    def get_config(self):
        config = super().get_config()
        config["samples_per_patch"] = self.samples_per_patch
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverLabelAdapter(keras.layers.Layer):
    """A label vector `[B, K]` (one-hot or scores) as one token `[B, 1, K]`."""

    supports_padding_mask = False

    def call(self, inputs):
        return ops.expand_dims(inputs, 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[-1])


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverTokenInput(PerceiverArrayAdapter):
    """Input adapter of a backbone that encodes tokens made before it.

    Passes `[B, M, C]` tokens through unchanged (no positions). Unlike
    `PerceiverArrayAdapter(position_encoding=None)` it offers no padding
    mask, so the backbone's only input is `inputs` and another model can
    call it on a symbolic tensor (Keras cannot pass None for an optional
    input symbolically).
    """

    def __init__(self, **kwargs):
        kwargs["position_encoding"] = None
        super().__init__(**kwargs)

    @property
    def supports_padding_mask(self):
        return False


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMultimodalAdapter(keras.layers.Layer):
    """A dict of modalities to one token array `[B, M, C]`.

    Each modality's adapter makes `[B, M_i, C_i]` tokens. They are padded to
    `C = max(C_i) + min_padding_size` channels with a learned vector per
    modality (`{name}_padding`); with `mask_probs`, each token of modality
    `name` is replaced by a learned `{name}_mask_token` with probability
    `mask_probs[name]` (in training and inference alike, as DeepMind does;
    probabilities 0 and 1 are deterministic). Modalities are concatenated in
    sorted name order.

    Args:
        modalities: dict name -> adapter layer (or its config), e.g.
            `{"audio": PerceiverAudioAdapter(...), "image":
            PerceiverImageAdapter(...), "label": PerceiverLabelAdapter()}`.
        min_padding_size: padding channels of the widest modality.
        mask_probs: None (no mask tokens) or dict name -> probability.
        seed: seed of the random masking (only used for probabilities
            strictly between 0 and 1).

    Call arguments:
        inputs: dict name -> array, shaped as that modality's adapter takes.
    """

    def __init__(
        self,
        modalities,
        min_padding_size=2,
        mask_probs=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(modalities, dict) or not modalities:
            raise ValueError(
                "`modalities` must be a non-empty dict of name -> adapter. "
                f"Received: modalities={modalities!r}."
            )
        if mask_probs is not None:
            if set(mask_probs) != set(modalities):
                raise ValueError(
                    "`mask_probs` needs one probability per modality "
                    f"{sorted(modalities)}. Received: mask_probs={mask_probs}."
                )
            if any(not 0.0 <= p <= 1.0 for p in mask_probs.values()):
                raise ValueError(
                    "`mask_probs` values must lie in [0, 1]. "
                    f"Received: mask_probs={mask_probs}."
                )
            mask_probs = {name: float(p) for name, p in mask_probs.items()}
        self.modalities = dict(sorted(
            _deserialize_layers(modalities, self.dtype_policy).items()
        ))
        self.min_padding_size = min_padding_size
        self.mask_probs = mask_probs
        self.seed = seed
        self.seed_generator = None
        if mask_probs and any(0.0 < p < 1.0 for p in mask_probs.values()):
            self.seed_generator = keras.random.SeedGenerator(seed)

    def _token_shapes(self, inputs_shape):
        self._check_names(inputs_shape, "inputs")
        return {
            name: tuple(adapter.compute_output_shape(tuple(inputs_shape[name])))
            for name, adapter in self.modalities.items()
        }

    def _check_names(self, structure, what):
        if not isinstance(structure, dict) or set(structure) != set(
            self.modalities
        ):
            received = sorted(structure) if isinstance(structure, dict) else (
                type(structure).__name__
            )
            raise ValueError(
                f"`{what}` must be a dict with keys {sorted(self.modalities)}."
                f" Received: {received}."
            )

    def num_channels(self, inputs_shape):
        """The common token width C."""
        widths = [s[-1] for s in self._token_shapes(inputs_shape).values()]
        return max(widths) + self.min_padding_size

    def modality_sizes(self, inputs_shape):
        """Tokens per modality, in concatenation (sorted) order."""
        return {
            name: shape[1]
            for name, shape in self._token_shapes(inputs_shape).items()
        }

    def build(self, inputs_shape):
        token_shapes = self._token_shapes(inputs_shape)
        for name, adapter in self.modalities.items():
            if not adapter.built:  # a deserialized adapter comes built
                adapter.build(tuple(inputs_shape[name]))
        channels = self.num_channels(inputs_shape)
        self.paddings = {
            name: TrainablePositionEncoding(
                1, channels - shape[-1], dtype=self.dtype_policy,
                name=f"{name}_padding",
            )
            for name, shape in token_shapes.items()
        }
        self.mask_tokens = {}
        if self.mask_probs is not None:
            self.mask_tokens = {
                name: TrainablePositionEncoding(
                    1, channels, dtype=self.dtype_policy,
                    name=f"{name}_mask_token",
                )
                for name in self.modalities
            }
        for layer in [*self.paddings.values(), *self.mask_tokens.values()]:
            layer.build()
        self.built = True

    def _mask(self, name, tokens):
        probability = self.mask_probs[name] if self.mask_probs else 0.0
        if probability == 0.0:
            return tokens
        mask_token = self.mask_tokens[name](tokens)  # [B, 1, C]
        if probability == 1.0:
            return ops.broadcast_to(mask_token, ops.shape(tokens))
        batch, num_tokens = ops.shape(tokens)[0], ops.shape(tokens)[1]
        draws = keras.random.uniform(
            (batch, num_tokens, 1), seed=self.seed_generator
        )
        return ops.where(draws < probability, mask_token, tokens)

    def call(self, inputs, training=None):
        self._check_names(inputs, "inputs")
        parts = []
        for name, adapter in self.modalities.items():
            tokens = adapter(inputs[name])
            padding = self.paddings[name](tokens)  # [B, 1, P]
            shape = ops.shape(tokens)
            padding = ops.broadcast_to(
                padding, (shape[0], shape[1], padding.shape[-1])
            )
            tokens = ops.concatenate([tokens, padding], axis=-1)
            parts.append(self._mask(name, tokens))
        return ops.concatenate(parts, axis=1)

    def compute_output_shape(self, inputs_shape):
        token_shapes = self._token_shapes(inputs_shape)
        sizes = [shape[1] for shape in token_shapes.values()]
        total = None if None in sizes else sum(sizes)
        batch = next(iter(token_shapes.values()))[0]
        return (batch, total, self.num_channels(inputs_shape))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "modalities": {
                    name: keras.layers.serialize(adapter)
                    for name, adapter in self.modalities.items()
                },
                "min_padding_size": self.min_padding_size,
                "mask_probs": self.mask_probs,
                "seed": self.seed,
            }
        )
        return config


QUERY_TYPES = ("fourier", "trainable")
POINT_POSITIONS = ("subsampled", "grid")


def _point_features(point_positions, indices, index_dims, *fourier_options):
    """Fourier features `[P, F]` (float32) of chosen points of a grid."""
    if point_positions == "grid":
        positions = linear_positions(index_dims)[indices]
    else:
        positions = subsampled_positions(indices, index_dims)
    features = fourier_features_from_positions(positions, *fourier_options)
    return features.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _all_point_features(point_positions, index_dims, *fourier_options):
    """`_point_features` of every grid point, computed once per grid."""
    if point_positions == "grid":
        features = fourier_features(index_dims, *fourier_options)
    else:
        indices = np.arange(math.prod(index_dims))
        features = _point_features(
            point_positions, indices, index_dims, *fourier_options
        )
    features.setflags(write=False)
    return features


def _normalize_query_spec(name, spec):
    spec = dict(spec)
    kind = spec.get("position_encoding")
    if kind not in QUERY_TYPES:
        raise ValueError(
            f"Query spec of modality {name!r} needs `position_encoding` in "
            f"{QUERY_TYPES}. Received: {spec!r}."
        )
    if not spec.get("index_dims"):
        raise ValueError(
            f"Query spec of modality {name!r} needs `index_dims` (its output "
            f"grid). Received: {spec!r}."
        )
    spec["index_dims"] = tuple(int(n) for n in spec["index_dims"])
    if kind == "fourier":
        spec.setdefault("concat_pos", True)
        spec.setdefault("sine_only", False)
        resolution = spec.get("max_resolution") or spec["index_dims"]
        spec["max_resolution"] = tuple(resolution)
        if "num_bands" not in spec:
            raise ValueError(
                f"Fourier queries of modality {name!r} need `num_bands`."
            )
    else:
        spec.setdefault("init_scale", 0.02)
        if "num_channels" not in spec:
            raise ValueError(
                f"Learned queries of modality {name!r} need `num_channels`."
            )
    return spec


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMultimodalQueries(keras.layers.Layer):
    """Decoder queries of several modalities as one array `[B, O, C]`.

    Each modality's queries are Fourier features of its output grid or a
    learned array; they are padded to `C = max(widths) + min_padding_size`
    channels with a learned vector per modality (`{name}_padding`) and
    concatenated in sorted name order (DeepMind's `MultimodalDecoder`).

    Any subset of a Fourier modality's grid points can be queried (a chunk
    of the output); a point's query does not depend on which others are
    queried with it, so decoding chunk by chunk gives the full decode.

    Point positions: DeepMind's decoder places queried points at
    `-1 + 2 * index / dim` ("subsampled", what its video colab always uses,
    for chunks and whole clips alike), but a decoder queried without
    choosing points uses `linspace(-1, 1, dim)` ("grid"). The released video
    model was run the first way.

    Args:
        modalities: dict name -> query spec, either
            `{"position_encoding": "fourier", "index_dims": (T, H, W),
            "num_bands": 32, "max_resolution": (T, H, W), "concat_pos": True,
            "sine_only": False}` or `{"position_encoding": "trainable",
            "index_dims": (1,), "num_channels": 1024, "init_scale": 0.02}`.
        min_padding_size: padding channels of the widest modality.
        point_positions: "subsampled" or "grid", see above.

    Call arguments:
        reference: any tensor whose first axis is the batch.
        points: optional dict name -> flat (row-major) indices of the grid
            points to query, for Fourier modalities; a modality left out is
            queried at every grid point.
    """

    def __init__(
        self,
        modalities,
        min_padding_size=2,
        point_positions="subsampled",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(modalities, dict) or not modalities:
            raise ValueError(
                "`modalities` must be a non-empty dict of name -> query spec."
                f" Received: modalities={modalities!r}."
            )
        if point_positions not in POINT_POSITIONS:
            raise ValueError(
                f"`point_positions` must be one of {POINT_POSITIONS}. "
                f"Received: point_positions={point_positions!r}."
            )
        self.point_positions = point_positions
        self.modalities = {
            name: _normalize_query_spec(name, spec)
            for name, spec in sorted(modalities.items())
        }
        self.min_padding_size = min_padding_size
        widths = {name: self.query_width(name) for name in self.modalities}
        self.num_channels = max(widths.values()) + min_padding_size
        self.learned_queries = {
            name: TrainablePositionEncoding(
                math.prod(spec["index_dims"]),
                spec["num_channels"],
                spec["init_scale"],
                dtype=self.dtype_policy,
                name=f"{name}_queries",
            )
            for name, spec in self.modalities.items()
            if spec["position_encoding"] == "trainable"
        }
        self.paddings = {
            name: TrainablePositionEncoding(
                1, self.num_channels - width, dtype=self.dtype_policy,
                name=f"{name}_padding",
            )
            for name, width in widths.items()
        }

    def query_width(self, name):
        spec = self.modalities[name]
        if spec["position_encoding"] == "trainable":
            return spec["num_channels"]
        return fourier_channels(
            len(spec["index_dims"]), spec["num_bands"], spec["concat_pos"],
            spec["sine_only"],
        )

    def num_queries(self, points=None):
        """Queries per modality, in concatenation (sorted) order."""
        points = self._check_points(points)
        return {
            name: len(points[name]) if name in points
            else math.prod(spec["index_dims"])
            for name, spec in self.modalities.items()
        }

    def _check_points(self, points):
        points = dict(points or {})
        for name, indices in points.items():
            spec = self.modalities.get(name)
            if spec is None or spec["position_encoding"] != "fourier":
                raise ValueError(
                    "`points` can only choose grid points of Fourier-query "
                    f"modalities {self._fourier_names()}. Received points "
                    f"for {name!r}."
                )
            indices = np.asarray(indices)
            size = math.prod(spec["index_dims"])
            if indices.ndim != 1 or indices.dtype.kind not in "iu" or (
                indices.size and not 0 <= indices.min() <= indices.max() < size
            ):
                raise ValueError(
                    f"`points[{name!r}]` must be a 1-D array of integer "
                    f"indices in [0, {size}). Received: {indices!r:.200}."
                )
            points[name] = indices
        return points

    def _fourier_names(self):
        return [
            name for name, spec in self.modalities.items()
            if spec["position_encoding"] == "fourier"
        ]

    def fourier_queries(self, name, indices=None):
        """NumPy float32 `[P, width]` Fourier queries of one modality.

        `indices` None queries every grid point (cached).
        """
        spec = self.modalities[name]
        options = (spec["num_bands"], spec["max_resolution"],
                   spec["concat_pos"], spec["sine_only"])
        if indices is None:
            return _all_point_features(
                self.point_positions, spec["index_dims"], *options
            )
        return _point_features(
            self.point_positions, indices, spec["index_dims"], *options
        )

    def build(self, reference_shape=None):
        for layer in [*self.learned_queries.values(), *self.paddings.values()]:
            layer.build()
        self.built = True

    def call(self, reference, points=None):
        points = self._check_points(points)
        batch = ops.shape(reference)[0]
        parts = []
        for name, spec in self.modalities.items():
            if spec["position_encoding"] == "trainable":
                queries = self.learned_queries[name](reference)
            else:
                features = ops.convert_to_tensor(
                    self.fourier_queries(name, points.get(name)),
                    dtype=self.compute_dtype,
                )
                queries = ops.broadcast_to(
                    features[None], (batch,) + tuple(features.shape)
                )
            padding = self.paddings[name](reference)  # [B, 1, P]
            padding = ops.broadcast_to(
                padding, (batch, queries.shape[1], padding.shape[-1])
            )
            parts.append(ops.concatenate([queries, padding], axis=-1))
        return ops.concatenate(parts, axis=1)

    def compute_output_spec(self, reference, points=None):
        # Defined so that symbolic calls never compute the Fourier features.
        total = sum(self.num_queries(points).values())
        return keras.KerasTensor(
            (reference.shape[0], total, self.num_channels), self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "modalities": {
                    name: dict(spec) for name, spec in self.modalities.items()
                },
                "min_padding_size": self.min_padding_size,
                "point_positions": self.point_positions,
            }
        )
        return config
