"""Input adapters: raw arrays to the `[batch, M, C]` tokens the encoder reads.

An adapter optionally transforms its input (convolution, patches, token
embedding), flattens the index dimensions and attaches positions (Fourier or
trainable, concatenated or added). The encoder never sees modality details.
"""

import math

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.position_encoding import FourierPositionEncoding
from perceiver_keras.layers.position_encoding import TrainablePositionEncoding
from perceiver_keras.layers.position_encoding import fourier_channels
from perceiver_keras.layers.utils import check_positive

POSITION_ENCODINGS = ("fourier", "trainable", None)
CONV_PADDINGS = ("same", "pad_then_valid_pool")
# Option values renamed since; saved configs may still hold them.
LEGACY_CONV_PADDING = {"symmetric": "pad_then_valid_pool"}


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverArrayAdapter(keras.layers.Layer):
    """`[B, d1..dk, C]` -> `[B, d1*..*dk, C + P]` with positions.

    Args:
        position_encoding: "fourier", "trainable" or None.
        num_bands, max_resolution, concat_pos, sine_only: Fourier options
            (see `FourierPositionEncoding`).
        position_channels: channels of trainable positions.
        position_init_scale: init stddev of trainable positions.
        project_pos_dim: if set, a Dense projects positions to this width.
        concat_or_add_pos: "concat" or "add" (then position width must equal
            the input width).
        feature_fourier_channels: indices of input channels (after any
            transform) whose values get Fourier features appended,
            `sin(pi f x), cos(pi f x)` for `feature_num_bands` frequencies
            `f = linspace(1, feature_max_frequency)`: e.g. point coordinates
            in [-1, 1], as the Perceiver paper embeds them.
        input_projection_dim: if set, a Dense projects every element's
            features (after the Fourier features) to this width before the
            positions join them, so the cross-attention reads a wide token
            rather than a few raw channels.
    """

    def __init__(
        self,
        position_encoding="fourier",
        num_bands=64,
        max_resolution=None,
        concat_pos=True,
        sine_only=False,
        position_channels=None,
        position_init_scale=0.02,
        project_pos_dim=None,
        concat_or_add_pos="concat",
        feature_fourier_channels=None,
        feature_num_bands=8,
        feature_max_frequency=8.0,
        input_projection_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if feature_fourier_channels is not None:
            feature_fourier_channels = tuple(feature_fourier_channels)
            if not feature_fourier_channels or not all(
                isinstance(c, int) and c >= 0 for c in feature_fourier_channels
            ):
                raise ValueError(
                    "`feature_fourier_channels` must be a non-empty list of "
                    "channel indices >= 0. Received: "
                    f"feature_fourier_channels={feature_fourier_channels!r}."
                )
        check_positive("feature_num_bands", feature_num_bands)
        check_positive("feature_max_frequency", feature_max_frequency,
                        number=float)
        check_positive("input_projection_dim", input_projection_dim,
                        optional=True)
        check_positive("num_bands", num_bands)
        check_positive("project_pos_dim", project_pos_dim, optional=True)
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"`position_encoding` must be one of {POSITION_ENCODINGS}. "
                f"Received: position_encoding={position_encoding!r}."
            )
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(
                "`concat_or_add_pos` must be 'concat' or 'add'. "
                f"Received: concat_or_add_pos={concat_or_add_pos!r}."
            )
        if position_encoding == "trainable" and not position_channels:
            raise ValueError(
                "`position_channels` is required for trainable positions."
            )
        self.position_encoding = position_encoding
        self.num_bands = num_bands
        self.max_resolution = (
            None if max_resolution is None else tuple(max_resolution)
        )
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.position_channels = position_channels
        self.position_init_scale = position_init_scale
        self.project_pos_dim = project_pos_dim
        self.concat_or_add_pos = concat_or_add_pos
        self.feature_fourier_channels = feature_fourier_channels
        self.feature_num_bands = feature_num_bands
        self.feature_max_frequency = feature_max_frequency
        self.input_projection_dim = input_projection_dim

    # Subclasses override these three to transform the input first.
    def transform_shape(self, input_shape):
        return tuple(input_shape)

    def build_transform(self, input_shape):
        return self.transform_shape(input_shape)

    def transform(self, inputs, training=None):
        return inputs

    @property
    def supports_padding_mask(self):
        """Whether tokens map one-to-one to input positions."""
        return True

    def feature_width(self, width, projected=True):
        """Width of an element's features after the Fourier features and
        (if `projected`) the projection; `width`: after the transform."""
        if projected and self.input_projection_dim:
            return self.input_projection_dim
        if self.feature_fourier_channels:
            width += (
                2 * self.feature_num_bands * len(self.feature_fourier_channels)
            )
        return width

    def _widen(self, x):
        if self.feature_fourier_channels:
            values = ops.take(x, list(self.feature_fourier_channels), axis=-1)
            bands = np.pi * np.linspace(
                1.0, self.feature_max_frequency, self.feature_num_bands
            )
            scaled = values[..., None] * ops.cast(bands, x.dtype)
            scaled = ops.reshape(
                scaled, tuple(ops.shape(x)[:-1]) + (-1,)
            )
            x = ops.concatenate([x, ops.sin(scaled), ops.cos(scaled)], -1)
        if self.input_projection is not None:
            x = self.input_projection(x)
        return x

    def _position_width(self, rank):
        if self.position_encoding is None:
            return 0
        if self.project_pos_dim:
            return self.project_pos_dim
        if self.position_encoding == "trainable":
            return self.position_channels
        return fourier_channels(
            rank, self.num_bands, self.concat_pos, self.sine_only
        )

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(
                "`inputs` must have shape [batch, d1, ..., dk, channels] "
                f"with k >= 1. Received shape {tuple(input_shape)}."
            )
        self.raw_input_shape = tuple(input_shape)
        shape = tuple(self.build_transform(input_shape))
        self.token_grid = shape[1:-1]
        if self.feature_fourier_channels and (
            max(self.feature_fourier_channels) >= shape[-1]
        ):
            raise ValueError(
                "`feature_fourier_channels` must index the input's "
                f"{shape[-1]} channels. Received: feature_fourier_channels="
                f"{self.feature_fourier_channels}."
            )
        self.input_projection = None
        if self.input_projection_dim:
            self.input_projection = PerceiverDense(
                self.input_projection_dim,
                dtype=self.dtype_policy,
                name="input_projection",
            )
            self.input_projection.build(
                (None, self.feature_width(shape[-1], projected=False))
            )
        shape = shape[:-1] + (self.feature_width(shape[-1]),)
        self.positions = None
        if self.position_encoding == "fourier":
            self.positions = FourierPositionEncoding(
                self.num_bands,
                self.max_resolution,
                self.concat_pos,
                self.sine_only,
                dtype=self.dtype_policy,
                name="fourier_positions",
            )
        elif self.position_encoding == "trainable":
            if None in self.token_grid:
                raise ValueError(
                    "Trainable positions need a static index grid. "
                    f"Received inputs of shape {tuple(input_shape)}."
                )
            self.positions = TrainablePositionEncoding(
                math.prod(self.token_grid),
                self.position_channels,
                self.position_init_scale,
                dtype=self.dtype_policy,
                name="trainable_positions",
            )
            self.positions.build()
        self.position_projection = None
        if self.project_pos_dim:
            raw_width = (
                self.position_channels
                if self.position_encoding == "trainable"
                else fourier_channels(
                    len(self.token_grid), self.num_bands, self.concat_pos,
                    self.sine_only,
                )
            )
            self.position_projection = PerceiverDense(
                self.project_pos_dim,
                dtype=self.dtype_policy,
                name="position_projection",
            )
            self.position_projection.build((None, None, raw_width))
        pos_width = self._position_width(len(self.token_grid))
        if self.concat_or_add_pos == "add" and pos_width not in (0, shape[-1]):
            raise ValueError(
                "Added positions must match the input width: positions have "
                f"{pos_width} channels, inputs {shape[-1]}."
            )
        self.built = True

    def call(self, inputs, training=None):
        x = self._widen(self.transform(inputs, training=training))
        grid = tuple(x.shape[1:-1])
        tokens = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))
        if self.positions is None:
            return tokens
        pos = self.positions(x)
        if self.position_encoding == "trainable":
            if grid != self.token_grid:
                raise ValueError(
                    f"Trainable positions were built for a {self.token_grid} "
                    f"grid; received a {grid} grid."
                )
        if self.position_projection is not None:
            pos = self.position_projection(pos)
        if self.concat_or_add_pos == "add":
            return tokens + pos
        return ops.concatenate([tokens, ops.cast(pos, tokens.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        shape = self.transform_shape(input_shape)
        dims = shape[1:-1]
        num = None if None in dims else math.prod(dims)
        width = self.feature_width(shape[-1])
        if self.concat_or_add_pos == "concat":
            width += self._position_width(len(dims))
        return (input_shape[0], num, width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "position_encoding": self.position_encoding,
                "num_bands": self.num_bands,
                "max_resolution": self.max_resolution,
                "concat_pos": self.concat_pos,
                "sine_only": self.sine_only,
                "position_channels": self.position_channels,
                "position_init_scale": self.position_init_scale,
                "project_pos_dim": self.project_pos_dim,
                "concat_or_add_pos": self.concat_or_add_pos,
                "feature_fourier_channels": self.feature_fourier_channels,
                "feature_num_bands": self.feature_num_bands,
                "feature_max_frequency": self.feature_max_frequency,
                "input_projection_dim": self.input_projection_dim,
            }
        )
        return config


def space_to_depth(x, spatial_block, temporal_block=1):
    """`b (h dh) (w dw) c -> b h w (dh dw c)`; video adds `t dt` in front."""
    shape = x.shape
    if len(shape) == 4:
        _, h, w, c = shape
        s = spatial_block
        x = ops.reshape(x, (-1, h // s, s, w // s, s, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h // s, w // s, s * s * c))
    # Video: each frame as an image, then time; two transposes of rank <= 6
    # rather than one of rank 8, which LiteRT and TFLite cannot run.
    _, t, h, w, c = shape
    s, dt = spatial_block, temporal_block
    x = space_to_depth(ops.reshape(x, (-1, h, w, c)), s)
    x = ops.reshape(x, (-1, t // dt, dt, (h // s) * (w // s), s * s * c))
    x = ops.transpose(x, (0, 1, 3, 2, 4))
    return ops.reshape(x, (-1, t // dt, h // s, w // s, dt * s * s * c))


def same_padding(length, size, stride):
    """TensorFlow's SAME padding (left, right): the odd element right."""
    total = max((-(-length // stride) - 1) * stride + size - length, 0)
    return total // 2, total - total // 2


@keras.saving.register_keras_serializable(package="perceiver_keras")
class SameAveragePooling1D(keras.layers.AveragePooling1D):
    """`AveragePooling1D` whose SAME padding averages the real elements
    only, on every backend.

    Keras' torch backend (3.15) pads an asymmetric SAME pool by repeating
    the edge element, which the average then counts: pad with zeros here
    and divide by the number of real elements instead.
    """

    def call(self, inputs):
        length = inputs.shape[1]
        if (
            keras.backend.backend() != "torch"
            or self.padding != "same"
            or length is None
        ):
            return super().call(inputs)
        size, stride = self.pool_size[0], self.strides[0]
        pad = [(0, 0), same_padding(length, size, stride), (0, 0)]
        ones = ops.ones((1, length, 1), inputs.dtype)

        def pool(x):
            return ops.average_pool(ops.pad(x, pad), size, stride, "valid")

        return pool(inputs) / pool(ones)


class ConvStem:
    """DeepMind's conv stem (its image preprocessor's "conv"), for 1-D
    sequences or 2-D images: a size-7 stride-2 convolution without bias,
    BatchNorm, ReLU, then a size-3 stride-2 max (or average) pool: 4x
    downsampling. One shared filter finds a local pattern wherever it lies.

    A mixin for adapters: the layers are the adapter's own attributes
    (`conv`, `batch_norm`), so weight paths stay those of the converters'
    tables."""

    def make_conv_stem(self, rank, num_channels, same=True, pool="max"):
        """`same`: TensorFlow SAME padding (DeepMind); otherwise the input
        is zero-padded by 3 on every side and the pool is unpadded
        (transformers). `pool`: "max" (DeepMind) or "average"."""
        conv, pad = {
            1: (keras.layers.Conv1D, keras.layers.ZeroPadding1D),
            2: (keras.layers.Conv2D, keras.layers.ZeroPadding2D),
        }[rank]
        pool = {
            ("max", 1): keras.layers.MaxPooling1D,
            ("max", 2): keras.layers.MaxPooling2D,
            ("average", 1): SameAveragePooling1D,
        }[pool, rank]
        padding = "same" if same else "valid"
        self.conv_pad = None if same else pad(3, dtype=self.dtype_policy)
        self.conv = conv(
            num_channels, 7, strides=2, use_bias=False, padding=padding,
            dtype=self.dtype_policy, name="conv",
        )
        self.batch_norm = keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy,
            name="batch_norm",
        )
        self.pool = pool(
            3, strides=2, padding=padding, dtype=self.dtype_policy
        )

    def conv_stem_shapes(self, shape):
        """Input shapes of the conv and of the BatchNorm, and the output
        shape."""
        conv_in = shape
        if self.conv_pad is not None:
            conv_in = self.conv_pad.compute_output_shape(shape)
        conv_out = self.conv.compute_output_shape(conv_in)
        return conv_in, conv_out, self.pool.compute_output_shape(conv_out)

    def build_conv_stem(self, shape):
        conv_in, conv_out, _ = self.conv_stem_shapes(shape)
        self.conv.build(conv_in)
        self.batch_norm.build(conv_out)

    def conv_stem(self, inputs, training=None):
        x = inputs if self.conv_pad is None else self.conv_pad(inputs)
        x = self.conv(x)
        x = ops.relu(self.batch_norm(x, training=training))
        return self.pool(x)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverSequenceAdapter(ConvStem, PerceiverArrayAdapter):
    """Sequences `[B, L, C]` to tokens, each element as it is or through
    a 1-D conv stem.

    Args:
        prep_type: "features" (one token per element) or "conv" (the 1-D
            form of DeepMind's image stem, see `ConvStem`: one token per 4
            elements, `num_channels` wide).
        num_channels: output width of "conv".
        conv_pool: the stem's pool, "max" (as DeepMind's image stem) or
            "average" (which also averages the noise of noisy signals).
        Remaining arguments: see `PerceiverArrayAdapter`.
    """

    PREP_TYPES = ("features", "conv")
    CONV_POOLS = ("max", "average")

    def __init__(
        self, prep_type="features", num_channels=None, conv_pool="max",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if prep_type not in self.PREP_TYPES:
            raise ValueError(
                f"`prep_type` must be one of {self.PREP_TYPES}. "
                f"Received: prep_type={prep_type!r}."
            )
        if conv_pool not in self.CONV_POOLS:
            raise ValueError(
                f"`conv_pool` must be one of {self.CONV_POOLS}. "
                f"Received: conv_pool={conv_pool!r}."
            )
        if prep_type == "conv":
            check_positive("num_channels", num_channels)
        self.prep_type = prep_type
        self.num_channels = num_channels
        self.conv_pool = conv_pool
        self.conv_pad = self.conv = self.batch_norm = self.pool = None
        if prep_type == "conv":
            self.make_conv_stem(1, num_channels, pool=conv_pool)

    @property
    def supports_padding_mask(self):
        return self.prep_type == "features"

    def _check_rank(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "`inputs` must have shape [batch, length, channels]. "
                f"Received shape {tuple(input_shape)}."
            )

    def transform_shape(self, input_shape):
        self._check_rank(input_shape)
        if self.prep_type == "conv":
            return self.conv_stem_shapes(tuple(input_shape))[2]
        return tuple(input_shape)

    def build_transform(self, input_shape):
        shape = self.transform_shape(input_shape)  # checks the rank first
        if self.prep_type == "conv":
            self.build_conv_stem(tuple(input_shape))
        return shape

    def transform(self, inputs, training=None):
        if self.prep_type == "conv":
            return self.conv_stem(inputs, training=training)
        return inputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "prep_type": self.prep_type,
                "num_channels": self.num_channels,
                "conv_pool": self.conv_pool,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverImageAdapter(ConvStem, PerceiverArrayAdapter):
    """Images `[B, H, W, C]` (or video `[B, T, H, W, C]`) to tokens.

    Args:
        prep_type: "pixels" (optionally strided), "conv1x1" (Dense-like 1x1
            convolution to `num_channels`), "conv" (7x7/2 conv without bias,
            BatchNorm, ReLU, 3x3/2 max pool: 4x downsampling) or "patches"
            (space-to-depth, optionally followed by a Dense).
        spatial_downsample, temporal_downsample: strides / block sizes.
        num_channels: output width of conv1x1, conv, or the post-patch Dense.
        conv_padding: "same" (TensorFlow SAME, DeepMind) or
            "pad_then_valid_pool" (the conv's input zero-padded by 3 on every
            side, then an unpadded max pool: transformers). The former name
            "symmetric" (which NumPy and TensorFlow use for mirror padding)
            is still read from saved configs.
        conv_after_patching: apply a Dense after "patches".
        Remaining arguments: see `PerceiverArrayAdapter`.
    """

    PREP_TYPES = ("pixels", "conv1x1", "conv", "patches")

    def __init__(
        self,
        prep_type="pixels",
        spatial_downsample=1,
        temporal_downsample=1,
        num_channels=None,
        conv_padding="same",
        conv_after_patching=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if prep_type not in self.PREP_TYPES:
            raise ValueError(
                f"`prep_type` must be one of {self.PREP_TYPES}. "
                f"Received: prep_type={prep_type!r}."
            )
        if prep_type in ("conv1x1", "conv") and not num_channels:
            raise ValueError(f"`num_channels` is required for {prep_type!r}.")
        conv_padding = LEGACY_CONV_PADDING.get(conv_padding, conv_padding)
        if conv_padding not in CONV_PADDINGS:
            raise ValueError(
                f"`conv_padding` must be one of {CONV_PADDINGS}. "
                f"Received: conv_padding={conv_padding!r}."
            )
        self.prep_type = prep_type
        self.spatial_downsample = spatial_downsample
        self.temporal_downsample = temporal_downsample
        self.num_channels = num_channels
        self.conv_padding = conv_padding
        self.conv_after_patching = conv_after_patching

        self.conv_pad = self.conv = self.batch_norm = self.pool = None
        self.patch_projection = None
        if prep_type == "conv1x1":
            self.conv = keras.layers.Conv2D(
                num_channels, 1, strides=spatial_downsample,
                dtype=self.dtype_policy, name="conv1x1",
            )
        elif prep_type == "conv":
            if spatial_downsample != 4:
                raise ValueError(
                    "prep_type='conv' downsamples by exactly 4. Received: "
                    f"spatial_downsample={spatial_downsample}."
                )
            self.make_conv_stem(2, num_channels, conv_padding == "same")
        elif prep_type == "patches" and conv_after_patching:
            self.patch_projection = PerceiverDense(
                num_channels, dtype=self.dtype_policy, name="patch_projection"
            )

    @property
    def supports_padding_mask(self):
        return self.prep_type == "pixels" and self.spatial_downsample == 1

    def transform_shape(self, input_shape):
        shape = tuple(input_shape)
        s, t = self.spatial_downsample, self.temporal_downsample
        video = len(shape) == 5
        if self.prep_type == "pixels":
            dims = [None if d is None else -(-d // s) for d in shape[-3:-1]]
            if video:
                dims.insert(0, None if shape[1] is None else -(-shape[1] // t))
            return (shape[0], *dims, shape[-1])
        if self.prep_type == "conv1x1":
            return self.conv.compute_output_shape(shape)
        if self.prep_type == "conv":
            return self.conv_stem_shapes(shape)[2]
        dims = [d // s for d in shape[-3:-1]]
        width = shape[-1] * s * s
        if video:
            dims.insert(0, shape[1] // t)
            width *= t
            if dims[0] == 1:
                dims = dims[1:]  # a single time step collapses (optical flow)
        if self.patch_projection is not None:
            width = self.num_channels
        return (shape[0], *dims, width)

    def build_transform(self, input_shape):
        shape = tuple(input_shape)
        if self.prep_type == "conv1x1":
            self.conv.build(shape)
        elif self.prep_type == "conv":
            self.build_conv_stem(shape)
        elif self.patch_projection is not None:
            block = self.spatial_downsample**2
            if len(shape) == 5:
                block *= self.temporal_downsample
            self.patch_projection.build((None, shape[-1] * block))
        return self.transform_shape(shape)

    def transform(self, inputs, training=None):
        s, t = self.spatial_downsample, self.temporal_downsample
        if self.prep_type == "pixels":
            if len(inputs.shape) == 5:
                return inputs[:, ::t, ::s, ::s]
            return inputs[:, ::s, ::s] if s > 1 else inputs
        if self.prep_type == "conv1x1":
            return self.conv(inputs)
        if self.prep_type == "conv":
            return self.conv_stem(inputs, training=training)
        x = space_to_depth(inputs, s, t)
        if len(x.shape) == 5 and x.shape[1] == 1:
            x = x[:, 0]
        if self.patch_projection is not None:
            x = self.patch_projection(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "prep_type": self.prep_type,
                "spatial_downsample": self.spatial_downsample,
                "temporal_downsample": self.temporal_downsample,
                "num_channels": self.num_channels,
                "conv_padding": self.conv_padding,
                "conv_after_patching": self.conv_after_patching,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverTokenAdapter(keras.layers.Layer):
    """Token ids `[B, L]` -> embeddings plus learned positions `[B, L, C]`.

    The byte-level language model's input: `Embedding(vocabulary_size, C)`
    with a trainable `[max_sequence_length, C]` position array added.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        max_sequence_length,
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.TruncatedNormal(0.02)
        )

    supports_padding_mask = True

    def build(self, input_shape):
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.hidden_dim,
            embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build(input_shape)
        self.positions = TrainablePositionEncoding(
            self.max_sequence_length,
            self.hidden_dim,
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.positions.build()
        self.built = True

    def call(self, inputs, training=None):
        tokens = self.token_embedding(inputs)
        length = inputs.shape[1]
        positions = ops.cast(self.positions.embeddings, tokens.dtype)
        return tokens + positions[None, :length]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "max_sequence_length": self.max_sequence_length,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
