"""Position encodings: trainable arrays and Fourier features of index grids.

Fourier features follow DeepMind's `generate_fourier_features`: positions
`linspace(-1, 1, n)` per axis on an `ij` meshgrid flattened row-major;
frequencies `linspace(1, max_resolution / 2, num_bands)` per axis; features
`[pos_1..pos_d, sin(pi f x) (axis 1 bands, axis 2 bands, ..), cos(...)]`.
They are computed once per grid in float64 NumPy and cached as float32.
"""

import functools
import math

import keras
import numpy as np
from keras import ops


def linear_positions(index_dims):
    """`[prod(index_dims), d]` grid of `linspace(-1, 1, n)` coordinates."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float64) for n in index_dims]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return grid.reshape(-1, len(index_dims))


def subsampled_positions(indices, index_dims):
    """Positions `-1 + 2 * index / dim` (no endpoint) of chosen grid points.

    DeepMind uses this formula, not `linspace`, for decoder queries of a
    subsampled chunk of outputs. `indices` are flat (row-major) indices.
    """
    coords = np.stack(np.unravel_index(np.asarray(indices), index_dims), -1)
    return -1.0 + 2.0 * coords / np.asarray(index_dims, dtype=np.float64)


def fourier_features_from_positions(
    positions, num_bands, max_resolution, concat_pos=True, sine_only=False
):
    """Fourier features of `positions` `[N, d]`, in float64."""
    positions = np.asarray(positions, dtype=np.float64)
    bands = np.stack(
        [np.linspace(1.0, res / 2.0, num_bands) for res in max_resolution]
    )  # [d, num_bands]
    scaled = (positions[:, :, None] * bands[None]).reshape(len(positions), -1)
    features = [np.sin(np.pi * scaled)]
    if not sine_only:
        features.append(np.cos(np.pi * scaled))
    if concat_pos:
        features.insert(0, positions)
    return np.concatenate(features, axis=-1)


@functools.lru_cache(maxsize=64)
def fourier_features(
    index_dims, num_bands, max_resolution=None, concat_pos=True, sine_only=False
):
    """Cached float32 `[prod(index_dims), channels]` Fourier features."""
    index_dims = tuple(int(n) for n in index_dims)
    max_resolution = tuple(max_resolution or index_dims)
    if len(max_resolution) != len(index_dims):
        raise ValueError(
            "`max_resolution` needs one entry per index dimension. Received: "
            f"max_resolution={max_resolution} for index_dims={index_dims}."
        )
    features = fourier_features_from_positions(
        linear_positions(index_dims),
        num_bands,
        max_resolution,
        concat_pos,
        sine_only,
    ).astype(np.float32)
    features.setflags(write=False)
    return features


def _torch_features(layer, index_dims):
    """`layer`'s features for `index_dims` as a torch tensor of its compute
    dtype, converted once per process (eager torch would copy the array on
    every call).

    Under `torch.compile` this runs outside the traced graph: dynamo cannot
    trace the NumPy cache (its arrays are write-protected).
    """
    import torch
    from keras.src.backend.torch.core import get_device

    @torch.compiler.disable
    def lookup():
        key = (
            index_dims, layer.num_bands, layer.max_resolution,
            layer.concat_pos, layer.sine_only, layer.compute_dtype,
            str(get_device()),
        )
        if key not in _TORCH_FEATURES:
            features = ops.convert_to_tensor(layer.features_for(index_dims))
            _TORCH_FEATURES[key] = ops.cast(features, layer.compute_dtype)
        return _TORCH_FEATURES[key]

    return lookup()


# Small: one entry per (grid, options, dtype, device) a process uses.
_TORCH_FEATURES = {}


def fourier_channels(rank, num_bands, concat_pos=True, sine_only=False):
    """Number of Fourier feature channels for a `rank`-D grid."""
    return rank * (num_bands * (1 if sine_only else 2) + int(concat_pos))


@keras.saving.register_keras_serializable(package="perceiver_keras")
class FourierPositionEncoding(keras.layers.Layer):
    """Fourier features of the index grid of its input, batch-broadcast.

    Call with `[B, d1..dk, C]` (the grid is `d1..dk`, which must be static);
    returns `[B, d1 * .. * dk, channels]`. No trainable weights.

    Args:
        num_bands: frequency bands per axis.
        max_resolution: per-axis training resolution that sets the highest
            frequency; defaults to the input's grid.
        concat_pos: include the raw positions.
        sine_only: omit the cosines.
    """

    def __init__(
        self,
        num_bands,
        max_resolution=None,
        concat_pos=True,
        sine_only=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_bands = num_bands
        self.max_resolution = (
            None if max_resolution is None else tuple(max_resolution)
        )
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        # No weights: built from the start. Parents reach it through
        # `features_for` or shape computations that never run `call`; Keras'
        # trainers (JAX: run eagerly) and `Model.quantize` treat an unbuilt
        # layer as a model still to build.
        self.built = True

    def channels(self, rank):
        return fourier_channels(
            rank, self.num_bands, self.concat_pos, self.sine_only
        )

    def features_for(self, index_dims):
        """`[prod(index_dims), channels]` NumPy features (cached)."""
        return fourier_features(
            tuple(index_dims),
            self.num_bands,
            self.max_resolution,
            self.concat_pos,
            self.sine_only,
        )

    def call(self, inputs):
        dims = tuple(inputs.shape[1:-1])
        if None in dims:
            # A graph traced for varying sizes: compute in-graph instead.
            features = self._features_in_graph(ops.shape(inputs)[1:-1])
        elif keras.backend.backend() == "torch":
            features = _torch_features(self, dims)
        else:
            features = ops.convert_to_tensor(self.features_for(dims))
        features = ops.cast(features, self.compute_dtype)
        shape = ops.shape(features)
        return ops.broadcast_to(
            features[None], (ops.shape(inputs)[0], shape[0], shape[1])
        )

    def _features_in_graph(self, index_dims):
        """The same features from dynamic sizes, in float32 graph ops."""
        if self.max_resolution is None:
            raise ValueError(
                "Inputs of varying size need a fixed `max_resolution` for "
                "their Fourier features."
            )
        axes = []
        for n in index_dims:
            steps = ops.cast(ops.arange(n), "float32")
            span = ops.cast(ops.maximum(n - 1, 1), "float32")
            axes.append(-1.0 + 2.0 * steps / span)
        grids = ops.meshgrid(*axes, indexing="ij")
        positions = ops.stack([ops.reshape(g, (-1,)) for g in grids], -1)
        bands = np.stack(
            [np.linspace(1.0, r / 2.0, self.num_bands)
             for r in self.max_resolution]
        ).astype("float32")
        scaled = ops.reshape(
            positions[:, :, None] * bands[None], (-1, bands.size)
        )
        features = [ops.sin(np.pi * scaled)]
        if not self.sine_only:
            features.append(ops.cos(np.pi * scaled))
        if self.concat_pos:
            features.insert(0, positions)
        return ops.concatenate(features, axis=-1)

    def compute_output_shape(self, input_shape):
        dims = input_shape[1:-1]
        num = None if None in dims else math.prod(dims)
        return (input_shape[0], num, self.channels(len(dims)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_bands": self.num_bands,
                "max_resolution": self.max_resolution,
                "concat_pos": self.concat_pos,
                "sine_only": self.sine_only,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class TrainablePositionEncoding(keras.layers.Layer):
    """A learned `[index_dim, num_channels]` array, batch-broadcast.

    Used for latents, learned input positions and decoder queries. Call with
    any tensor whose first axis is the batch; returns `[B, index_dim, C]`.

    Args:
        index_dim: number of positions.
        num_channels: channels per position.
        init_scale: stddev of the truncated-normal initialisation.
    """

    def __init__(self, index_dim, num_channels, init_scale=0.02, **kwargs):
        super().__init__(**kwargs)
        self.index_dim = index_dim
        self.num_channels = num_channels
        self.init_scale = init_scale

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.index_dim, self.num_channels),
            initializer=keras.initializers.TruncatedNormal(
                stddev=self.init_scale
            ),
            name="embeddings",
        )
        self.built = True

    def call(self, reference):
        batch = ops.shape(reference)[0]
        embeddings = ops.cast(self.embeddings, self.compute_dtype)
        return ops.broadcast_to(
            embeddings[None], (batch, self.index_dim, self.num_channels)
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.index_dim, self.num_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "index_dim": self.index_dim,
                "num_channels": self.num_channels,
                "init_scale": self.init_scale,
            }
        )
        return config
