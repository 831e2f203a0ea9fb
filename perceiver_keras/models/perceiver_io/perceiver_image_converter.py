"""ImageNet image converter for Perceiver image classifiers.

Centre crop, bicubic resize and mean/std normalisation, reproducing one of
three reference pipelines on every Keras backend (TensorFlow, JAX, PyTorch)
and inside `tf.data`:

- `mode="deepmind"`: DeepMind's ImageNet colab. Square centre crop of side
  `int(float32(crop_fraction) * float32(min(H, W)))` at offsets
  `((H - side) + 1) // 2`, `((W - side) + 1) // 2`, then
  `jax.image.resize(..., method="bicubic")` (Keys cubic, a = -0.5,
  antialiased when downsampling) in float32, then `(x - mean) / std`.
- `mode="transformers"`: transformers' `PerceiverImageProcessor` (the
  torchvision backend that class name refers to in transformers 5). Square
  centre crop of side `int(crop_fraction * min(H, W))` at offsets
  `int((H - side) / 2)`, then torchvision's antialiased bicubic resize: in
  float for float images; for integer (uint8) images, torch's fixed-point
  uint8 kernel (int16 weights, width pass then height pass, each rounded and
  clamped to 0..255), emulated bit for bit. Then `(x - mean) / std`.
- `mode="transformers_pil"`: transformers' `PerceiverImageProcessorPil` (the
  PIL backend, i.e. the transformers 4 "slow" processor): same crop, then
  Pillow's `Image.resize(..., BICUBIC)` on uint8 pixels, emulated bit for bit
  (22-bit fixed-point weights, two passes each rounded and clamped to 0..255,
  pass order of Pillow >= 13). Float inputs are first truncated to uint8 as
  that processor does (`astype(np.uint8)`).

All three use the same resampling weights up to rounding (PIL's, torch's and
jax's antialiased Keys-cubic weights coincide mathematically); they differ in
crop rounding and in whether the resampled pixels are rounded to uint8. The
weights are computed the way each reference rounds them: jax's and torch's
float paths in float32 (jax's own float32 weight error reaches ~0.007 on
0..255 pixels, i.e. ~1e-4 after normalisation, so exact weights would not
match it), Pillow's and torch's uint8 paths in float64 then fixed point.

Resizing is a separable linear map. For each spatial axis a weight matrix
`[out_size, in_size]` is computed once in NumPy and cached per
`(in_size, out_size)`, then applied with `einsum`, so all backends compute the
same float32 arithmetic. The fixed-point modes split each integer weight into
8-bit pieces so that every float32 partial sum is an exact integer below
2**24, then combine the pieces in int32: the result is exact on any backend
and any float32 matmul unit (TF32 and bfloat16 included).

Measured on random uint8 images (256x256, 300x400, 480x320, 224x224, 64x80,
257x333, 1000x700, 300x250), max abs difference of normalised values, all
three backends: deepmind vs the colab with `jax.image.resize` 3.4e-6;
transformers vs `PerceiverImageProcessor` 2.4e-7 on uint8 (identical pixels)
and 4.3e-6 on float images; transformers_pil vs `PerceiverImageProcessorPil`
4.8e-7 (identical pixels). Between the references themselves: torchvision's
and Pillow's uint8 results differ by up to 2 pixel levels (0.034), and the
uint8 and float paths by up to 0.6 on noise (uint8 clamps overshoot).

Precision note for the float paths ("deepmind", and "transformers" on float
images): they need full float32 matmuls. The JAX backend is asked for
`Precision.HIGHEST`; the TensorFlow backend runs the layer on the CPU (as
keras-hub does for all preprocessing); PyTorch runs on the input's device and
honours `torch.backends.cuda.matmul.allow_tf32` (off by default).
"""

import collections
import functools
import math

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone

try:
    from keras_hub.src.utils.tensor_utils import in_tf_function
except ImportError:  # pragma: no cover

    def in_tf_function():
        try:
            import tensorflow as tf
        except ImportError:
            return False
        return not tf.executing_eagerly()


try:
    from keras_hub.src.utils.tensor_utils import (
        convert_preprocessing_outputs_grain,
    )
    from keras_hub.src.utils.tensor_utils import in_grain_data_pipeline
except ImportError:  # pragma: no cover

    def in_grain_data_pipeline():
        return False

    convert_preprocessing_outputs_grain = None


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
MODES = ("deepmind", "transformers", "transformers_pil")

# Fixed-point precision of Pillow's 8-bit resampling (PRECISION_BITS).
_PIL_PRECISION = 22
# float32 represents every integer below 2**24 exactly.
_F32_EXACT = 1 << 24


# ---------------------------------------------------------------------------
# NumPy: crop boxes and resampling weights (cached).
# ---------------------------------------------------------------------------


def _keys_cubic(x, flavour):
    """Keys cubic kernel, a = -0.5, in each reference's operation order.

    Evaluated in `x`'s dtype (float64, or float32 for the "jax"/"torch32"
    emulations of float32 reference code).
    """
    x = np.abs(x)
    if flavour == "jax":
        inner = ((1.5 * x - 2.5) * x) * x + 1.0
        outer = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
        return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, outer, inner))
    a = -0.5
    if flavour == "pil":
        inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    else:  # torch: cubic_convolution1 / cubic_convolution2
        inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        outer = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    zero = np.zeros_like(x)
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, zero))


def _fma32(a, b, c):
    """float32 fused multiply-add (one rounding), via float64."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    return (a * b + c).astype(np.float32)


def _jax_weights(in_size, out_size):
    """`jax.image.resize` bicubic weights (`compute_weight_mat`) as XLA:CPU
    computes them in float32: constant division turned into a multiply by
    the reciprocal, the sample positions and the Keys polynomial contracted
    into fused multiply-adds.
    This reproduces jax's own float32 weight rounding (up to ~0.007 on
    0..255 pixels against exact weights), not just the exact weights."""
    f32 = np.float32
    inv_scale = f32(1.0 / (out_size / in_size))
    kernel_scale = max(inv_scale, f32(1.0))
    # (i + 0.5) * inv_scale - 0.5, contracted into one fused multiply-add.
    sample = _fma32(np.arange(out_size, dtype=f32) + f32(0.5), inv_scale, -0.5)
    index = np.arange(in_size, dtype=f32)
    x = np.abs(sample[None, :] - index[:, None]) * (f32(1.0) / kernel_scale)
    # ((1.5 x - 2.5) x) x + 1 and ((-0.5 x + 2.5) x - 4) x + 2
    inner = _fma32(_fma32(1.5, x, -2.5) * x, x, 1.0)
    outer = _fma32(_fma32(_fma32(-0.5, x, 2.5), x, -4.0), x, 2.0)
    weights = np.where(x >= 2.0, f32(0.0), np.where(x >= 1.0, outer, inner))
    total = np.sum(weights, axis=0, keepdims=True, dtype=f32)
    weights = np.where(
        np.abs(total) > f32(1000.0 * float(np.finfo(np.float32).eps)),
        weights / np.where(total != 0, total, f32(1.0)),
        f32(0.0),
    )
    return np.ascontiguousarray(weights.T.astype(f32))


def _tap_weights(in_size, out_size, flavour):
    """Pillow's `precompute_coeffs` ("pil", double), torch's
    `_compute_indices_min_size_weights_aa` in double ("torch", its uint8
    path) or in float ("torch32", its float path, C++ promotions included).
    Taps `[int(center - support + 0.5), int(center + support + 0.5))`."""
    single = flavour == "torch32"
    if single:
        f32 = np.float32
        scale = f32(in_size) / f32(out_size)
        support = f32(2.0 * float(scale)) if scale >= 1.0 else f32(2.0)
        inv = f32(1.0 / float(scale)) if scale >= 1.0 else f32(1.0)
        dtype = f32
    else:
        scale = in_size / out_size
        filterscale = max(scale, 1.0)
        support = 2.0 * filterscale
        inv = 1.0 / filterscale
        dtype = np.float64
    max_taps = int(math.ceil(support)) * 2 + 1
    weights = np.zeros((out_size, in_size), dtype=dtype)
    for i in range(out_size):
        if single:
            center = f32(float(scale) * (i + 0.5))
            xmin = max(int(float(center - support) + 0.5), 0)
            xmax = min(int(float(center + support) + 0.5), in_size)
        else:
            center = (i + 0.5) * scale
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size)
        taps = min(max(xmax - xmin, 0), max_taps)
        index = np.arange(xmin, xmin + taps)
        if single:
            arg = (index.astype(f32) - center).astype(np.float64) + 0.5
            arg = (arg * float(inv)).astype(f32)
            w = _keys_cubic(arg, "torch").astype(f32)
        else:
            w = _keys_cubic((index - center + 0.5) * inv, flavour)
        total = dtype(0.0)
        for value in w:  # sequential, as the C loops sum
            total = dtype(total + value)
        if total != 0.0:
            w = (w / total).astype(dtype)
        weights[i, xmin : xmin + taps] = w
    return weights


@functools.lru_cache(maxsize=256)
def _resample_weights(in_size, out_size, flavour):
    """`[out_size, in_size]` antialiased bicubic weights of one reference.

    "jax": `jax.image.resize` (float32); "torch32": torch's float path
    (float32); "torch": torch's uint8 path (float64, before fixed point);
    "pil": Pillow (float64, before fixed point). All four are the same
    weights up to rounding.
    """
    if flavour == "jax":
        weights = _jax_weights(in_size, out_size)
    else:
        weights = _tap_weights(in_size, out_size, flavour)
    weights.setflags(write=False)
    return weights


def _torch_uint8_precision(weights):
    """torch `_compute_index_ranges_int16_weights`: bits of the int16 taps."""
    wt_max = float(weights.max())
    for precision in range(22):
        if int(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15):
            return precision
    return 22


@functools.lru_cache(maxsize=256)
def _axis_plan(in_size, out_size, flavour, fixed_point):
    """Everything needed to resample one axis, as NumPy arrays.

    Float plan: `("float", matrix)` with a float32 `[out, in]` matrix.
    Fixed plan: `("fixed", pieces, multipliers, bias, shift)`: integer weights
    `K` (Pillow's / torch's, rounded half away from zero) are split as
    `K = sum_n pieces[n] * multipliers[n]` with small pieces, so that
    `einsum(pieces[n], pixels)` is exact in float32; the pass result is
    `clip((sum_n multipliers[n] * partial[n] + bias) >> shift, 0, 255)`.
    """
    weights = _resample_weights(in_size, out_size, flavour)
    if not fixed_point:
        matrix = weights.astype(np.float32)
        matrix.setflags(write=False)
        return ("float", matrix)
    if flavour == "pil":
        precision = _PIL_PRECISION
    else:
        precision = _torch_uint8_precision(weights)
    scaled = weights * float(1 << precision)
    k = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))
    k = k.astype(np.int64)
    taps = max(int(np.count_nonzero(k, axis=1).max()), 1)
    # Largest piece width b with 255 * (2**b - 1) * taps < 2**24.
    bits = 8
    while bits > 1 and 255 * ((1 << bits) - 1) * taps >= _F32_EXACT:
        bits -= 1
    magnitude, sign = np.abs(k), np.sign(k)
    total_bits = max(int(magnitude.max()).bit_length(), 1)
    n_pieces = -(-total_bits // bits)
    pieces, multipliers = [], []
    for n in range(n_pieces):
        piece = (magnitude >> (n * bits)) & ((1 << bits) - 1)
        pieces.append((sign * piece).astype(np.float32))
        multipliers.append(1 << (n * bits))
    pieces = np.stack(pieces)
    multipliers = np.asarray(multipliers, dtype=np.int32)
    pieces.setflags(write=False)
    multipliers.setflags(write=False)
    return ("fixed", pieces, multipliers, 1 << (precision - 1), precision)


def _crop_box(height, width, crop_fraction, mode):
    """`(top, left, crop_height, crop_width)` of the reference centre crop."""
    if crop_fraction is None:
        return 0, 0, height, width
    short = min(height, width)
    if mode == "deepmind":
        side = int(np.float32(crop_fraction) * np.float32(short))
        top = ((height - side) + 1) // 2
        left = ((width - side) + 1) // 2
    else:
        side = int(crop_fraction * short)
        top = int((height - side) / 2.0)
        left = int((width - side) / 2.0)
    return top, left, side, side


def _pil_horizontal_first(in_h, in_w, out_h, out_w):
    """Pillow >= 13 runs the vertical pass first when height shrinks most."""
    dh, dw = in_h - out_h, in_w - out_w
    return not (dh > 0 and dh > dw * 2)


# ---------------------------------------------------------------------------
# Tensor ops: Keras ops (eager, any backend) or raw TensorFlow (tf.data).
# ---------------------------------------------------------------------------


class _KerasOps:
    """Eager path: Keras backend ops, constants placed next to the input."""

    def __init__(self, like):
        self.backend = keras.config.backend()
        self.device = None
        if self.backend == "torch":
            self.device = getattr(like, "device", None)

    def constant(self, value, dtype):
        x = ops.convert_to_tensor(np.asarray(value), dtype=dtype)
        if self.backend == "torch" and self.device is not None:
            x = x.to(self.device)
        return x

    def einsum(self, equation, a, b):
        if self.backend == "jax":
            import jax.numpy as jnp
            from jax import lax

            return jnp.einsum(equation, a, b, precision=lax.Precision.HIGHEST)
        return ops.einsum(equation, a, b)

    cast = staticmethod(ops.cast)
    clip = staticmethod(ops.clip)
    floor = staticmethod(ops.floor)
    sum = staticmethod(ops.sum)
    right_shift = staticmethod(ops.right_shift)
    expand_dims = staticmethod(ops.expand_dims)


class _TFOps:
    """tf.data / tf.function path: TensorFlow ops on tf tensors."""

    def __init__(self):
        import tensorflow as tf

        self.tf = tf

    def constant(self, value, dtype):
        return self.tf.constant(np.asarray(value), dtype=dtype)

    def einsum(self, equation, a, b):
        return self.tf.einsum(equation, a, b)

    def cast(self, x, dtype):
        return self.tf.cast(x, dtype)

    def clip(self, x, lo, hi):
        return self.tf.clip_by_value(x, self.tf.cast(lo, x.dtype),
                                     self.tf.cast(hi, x.dtype))

    def floor(self, x):
        return self.tf.floor(x)

    def sum(self, x, axis):
        return self.tf.reduce_sum(x, axis=axis)

    def right_shift(self, x, y):
        return self.tf.bitwise.right_shift(x, self.tf.cast(y, x.dtype))

    def expand_dims(self, x, axis):
        return self.tf.expand_dims(x, axis)


_EQUATIONS = {1: "oh,bhwc->bowc", 2: "ow,bhwc->bhoc"}
_PIECE_EQUATIONS = {1: "noh,bhwc->nbowc", 2: "now,bhwc->nbhoc"}


def _apply_plan(xp, x, plan, axis):
    """Resamples float32 `x` `[B, H, W, C]` along `axis` (1 = H, 2 = W)."""
    if plan[0] == "float":
        return xp.einsum(_EQUATIONS[axis], xp.constant(plan[1], "float32"), x)
    _, pieces, multipliers, bias, shift = plan
    return _apply_fixed(
        xp,
        x,
        xp.constant(pieces, "float32"),
        xp.constant(multipliers, "int32"),
        bias,
        shift,
        axis,
    )


def _apply_fixed(xp, x, pieces, multipliers, bias, shift, axis):
    """One fixed-point pass; `x` holds integers 0..255 as float32."""
    partial = xp.einsum(_PIECE_EQUATIONS[axis], pieces, x)  # exact integers
    partial = xp.cast(partial, "int32")
    multipliers = xp.cast(multipliers, "int32")
    for _ in range(4):
        multipliers = xp.expand_dims(multipliers, -1)
    total = xp.sum(partial * multipliers, axis=0) + bias
    out = xp.clip(xp.right_shift(total, shift), 0, 255)
    return xp.cast(out, "float32")


_StaticPlan = collections.namedtuple(
    "_StaticPlan",
    ["unbatched", "box", "pixels", "flavour", "fixed", "passes", "mean",
     "std", "compute_dtype"],
)


def _to_pixels(xp, x, pixels):
    """float32 pixels; the fixed-point paths need integers 0..255."""
    x = xp.cast(x, "float32")
    if pixels != "float":
        x = xp.clip(x, 0.0, 255.0)
    if pixels == "floor_clip":
        # PerceiverImageProcessorPil: `image.astype(np.uint8)`.
        x = xp.floor(x)
    return x


def _normalize(xp, x, mean, std, compute_dtype):
    # (x - mean) * (1 / std): a subtract and a multiply, so that every
    # backend (XLA rewrites divisions by constants) rounds identically.
    mean = np.asarray(mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    x = x - xp.constant(mean, "float32")
    x = x * xp.constant(inv_std, "float32")
    if compute_dtype != "float32":
        x = xp.cast(x, compute_dtype)
    return x


def _run_static(xp, images, plan):
    """Crop, resample and normalise images whose shape is known."""
    x = images[None] if plan.unbatched else images
    top, left, crop_h, crop_w = plan.box
    x = x[:, top : top + crop_h, left : left + crop_w, :]
    x = _to_pixels(xp, x, plan.pixels)
    for axis, in_size, out_size in plan.passes:
        axis_plan = _axis_plan(in_size, out_size, plan.flavour, plan.fixed)
        x = _apply_plan(xp, x, axis_plan, axis)
    x = _normalize(xp, x, plan.mean, plan.std, plan.compute_dtype)
    return x[0] if plan.unbatched else x


@functools.lru_cache(maxsize=64)
def _jitted(plan):
    import jax

    return jax.jit(lambda images: _run_static(_KerasOps(images), images,
                                              plan))


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverImageConverter(ImageConverter):
    """ImageNet preprocessing for Perceiver: centre crop, bicubic, normalise.

    Takes raw images with pixel values in 0..255 (uint8 or float, NumPy
    arrays, backend tensors or tf tensors), batched `[B, H, W, 3]` or
    unbatched `[H, W, 3]`, and returns float32 normalised images
    `[B, *image_size, 3]` (or `[*image_size, 3]`). A list of images of
    different sizes is converted one by one and stacked (eager calls only).

    Args:
        image_size: `(height, width)` of the output. Defaults to `(224, 224)`.
        crop_fraction: float in `(0, 1]` or `None`. Side of the square centre
            crop as a fraction of the shorter image side (ImageNet models:
            `224 / 256`). `None` resizes the whole image without cropping.
        mean: per-channel mean on the 0..255 scale (ImageNet by default).
        std: per-channel standard deviation on the 0..255 scale.
        mode: `"deepmind"` (DeepMind's colab, float math), `"transformers"`
            (transformers' `PerceiverImageProcessor`, torchvision backend:
            float math on float images, torch's uint8 fixed point on integer
            images) or `"transformers_pil"` (transformers'
            `PerceiverImageProcessorPil`: Pillow's uint8 fixed point). See the
            module docstring for the exact arithmetic.
        data_format: only `"channels_last"` (or `None`) is supported.
        **kwargs: base layer arguments (`name`, `dtype`, ...). The output is
            cast to the layer's compute dtype (float32 by default).

    `tf.data`: map the converter (or a preprocessor holding it) over a
    dataset; height and width may be unknown (e.g. after `decode_jpeg`), in
    which case crop boxes and weights are computed at run time with
    `tf.numpy_function`. Map over single images or fixed-size batches, then
    batch; ragged batches are not supported.

    Example:
    ```python
    converter = PerceiverImageConverter()
    x = converter(np.random.randint(0, 256, (2, 300, 400, 3), dtype="uint8"))
    x.shape  # (2, 224, 224, 3)
    ```
    """

    backbone_cls = PerceiverBackbone

    def __init__(
        self,
        image_size=(224, 224),
        crop_fraction=224 / 256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        mode="deepmind",
        data_format=None,
        **kwargs,
    ):
        # Arguments of the base class that this converter fixes; they may
        # appear in configs written by generic keras-hub code.
        for key in (
            "scale",
            "offset",
            "crop_to_aspect_ratio",
            "pad_to_aspect_ratio",
            "interpolation",
            "antialias",
            "bounding_box_format",
        ):
            kwargs.pop(key, None)
        if mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={mode!r}"
            )
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "`data_format` must be 'channels_last' (or None). "
                f"Received: data_format={data_format!r}"
            )
        image_size = self._check_image_size(image_size)
        if crop_fraction is not None:
            if isinstance(crop_fraction, bool) or not isinstance(
                crop_fraction, (int, float, np.floating, np.integer)
            ):
                raise ValueError(
                    "`crop_fraction` must be a float in (0, 1] or None. "
                    f"Received: crop_fraction={crop_fraction!r}"
                )
            crop_fraction = float(crop_fraction)
            if not 0.0 < crop_fraction <= 1.0:
                raise ValueError(
                    "`crop_fraction` must be a float in (0, 1] or None. "
                    f"Received: crop_fraction={crop_fraction!r}"
                )
        mean = self._check_channels(mean, "mean")
        std = self._check_channels(std, "std")
        if any(s == 0 for s in std):
            raise ValueError(
                "`std` must be non-zero for every channel. "
                f"Received: std={std}"
            )
        super().__init__(
            image_size=image_size,
            scale=None,
            offset=None,
            crop_to_aspect_ratio=False,
            interpolation="bicubic",
            antialias=True,
            data_format="channels_last",
            **kwargs,
        )
        self.crop_fraction = crop_fraction
        self.mean = mean
        self.std = std
        self.mode = mode

    @staticmethod
    def _check_image_size(image_size):
        try:
            size = tuple(int(s) for s in image_size)
            valid = len(size) == 2 and all(s > 0 for s in size)
            valid = valid and all(float(s) == float(o)
                                  for s, o in zip(size, image_size))
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(
                "`image_size` must be a (height, width) pair of positive "
                f"ints. Received: image_size={image_size!r}"
            )
        return size

    @staticmethod
    def _check_channels(value, name):
        try:
            values = tuple(float(v) for v in np.asarray(value).reshape(-1))
        except (TypeError, ValueError):
            values = ()
        if np.ndim(value) != 1 or len(values) != 3:
            raise ValueError(
                f"`{name}` must hold 3 per-channel values (0..255 scale). "
                f"Received: {name}={value!r}"
            )
        return values

    @property
    def image_size(self):
        return super().image_size

    @image_size.setter
    def image_size(self, value):
        value = self._check_image_size(value)
        self.resizing.height, self.resizing.width = value

    # ------------------------------------------------------------------ call

    def _call_python(self, inputs):
        if isinstance(inputs, dict):
            if inputs.get("bounding_boxes") is not None:
                raise ValueError(
                    "PerceiverImageConverter does not transform bounding "
                    "boxes. Received a dict with 'bounding_boxes'."
                )
            outputs = dict(inputs)
            outputs["images"] = self._call_python(inputs["images"])
            return outputs
        if in_tf_function():
            return self._convert_tf(inputs)
        if isinstance(inputs, (list, tuple)):
            outputs = self._convert_list(inputs)
        else:
            outputs = self._convert_eager(inputs)
        if in_grain_data_pipeline() and convert_preprocessing_outputs_grain:
            return convert_preprocessing_outputs_grain(outputs)
        return outputs

    def _convert_list(self, images):
        if len(images) == 0:
            raise ValueError(
                "`inputs` must hold at least one image. Received an empty "
                f"{type(images).__name__}."
            )
        arrays = []
        for image in images:
            if hasattr(image, "shape") and hasattr(image, "dtype"):
                arrays.append(image)
            else:
                arrays.append(np.asarray(image))
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) == 1 and all(isinstance(a, np.ndarray) for a in arrays):
            return self._convert_eager(np.stack(arrays))
        outputs = []
        for image in arrays:
            shape = tuple(image.shape)
            if len(shape) != 3:
                raise ValueError(
                    "Each image in a list given as `inputs` must have shape "
                    f"(height, width, 3). Received an image of shape {shape}."
                )
            outputs.append(self._convert_eager(image))
        return ops.stack(outputs)

    def _validate(self, shape, dtype_name):
        shape = tuple(shape)
        expected = "(batch, height, width, 3) or (height, width, 3)"
        if len(shape) not in (3, 4):
            raise ValueError(
                f"`inputs` must be images of shape {expected}. Received "
                f"shape {shape} (rank {len(shape)})."
            )
        if shape[-1] is not None and shape[-1] != 3:
            raise ValueError(
                f"`inputs` must be RGB images of shape {expected}. Received "
                f"shape {shape} ({shape[-1]} channels)."
            )
        if any(d == 0 for d in shape):
            raise ValueError(
                f"`inputs` must be non-empty images of shape {expected}. "
                f"Received shape {shape}."
            )
        if dtype_name == "bool" or not (
            "int" in dtype_name or "float" in dtype_name
        ):
            raise ValueError(
                "`inputs` must hold numeric pixel values (uint8 or float, "
                f"0..255). Received dtype {dtype_name}."
            )

    def _integer_path(self, dtype_name):
        """Whether resampling runs in the reference's uint8 fixed point."""
        if self.mode == "transformers_pil":
            return True
        if self.mode == "transformers":
            return "int" in dtype_name
        return False

    def _flavour(self, fixed):
        if self.mode == "deepmind":
            return "jax"
        if self.mode == "transformers":
            return "torch" if fixed else "torch32"
        return "pil"

    def _convert_eager(self, images):
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            with tf.device("cpu"):
                return self._convert_eager_impl(images)
        return self._convert_eager_impl(images)

    def _convert_eager_impl(self, images):
        if not (hasattr(images, "shape") and hasattr(images, "dtype")):
            images = np.asarray(images)
        if not ops.is_tensor(images):
            if type(images).__module__.startswith("tensorflow"):
                images = np.asarray(images)
            images = ops.convert_to_tensor(images)
        dtype_name = keras.backend.standardize_dtype(images.dtype)
        shape = tuple(int(d) for d in ops.shape(images))
        self._validate(shape, dtype_name)
        plan = self._static_plan(shape, dtype_name)
        if keras.config.backend() == "jax":
            # One compiled program per input shape instead of one per op.
            return _jitted(plan)(images)
        return _run_static(_KerasOps(images), images, plan)

    def _static_plan(self, shape, dtype_name):
        """Hashable description of the whole computation for one shape."""
        height, width = int(shape[-3]), int(shape[-2])
        top, left, crop_h, crop_w = _crop_box(
            height, width, self.crop_fraction, self.mode
        )
        self._check_crop(shape, crop_h, crop_w)
        out_h, out_w = self.image_size
        fixed = self._integer_path(dtype_name)
        flavour = self._flavour(fixed)
        # (axis, in_size, out_size) in pass order; same-size axes are skipped
        # as the references skip them.
        passes = [(2, crop_w, out_w), (1, crop_h, out_h)]
        if self.mode == "transformers_pil" and not (
            _pil_horizontal_first(crop_h, crop_w, out_h, out_w)
        ):
            passes.reverse()
        passes = tuple(p for p in passes if p[1] != p[2])
        pixels = "float"
        if fixed and dtype_name != "uint8":
            pixels = "floor_clip" if "float" in dtype_name else "clip"
        return _StaticPlan(
            unbatched=len(shape) == 3,
            box=(top, left, crop_h, crop_w),
            pixels=pixels,
            flavour=flavour,
            fixed=fixed,
            passes=passes,
            mean=tuple(self.mean),
            std=tuple(self.std),
            compute_dtype=self.compute_dtype,
        )

    def _check_crop(self, shape, crop_h, crop_w):
        if crop_h < 1 or crop_w < 1:
            raise ValueError(
                "`inputs` are too small to centre-crop with crop_fraction="
                f"{self.crop_fraction}: the crop would be {crop_h}x{crop_w}. "
                f"Received shape {tuple(shape)}."
            )

    # ------------------------------------------------------------- tf.data

    def _convert_tf(self, images):
        import tensorflow as tf

        if isinstance(images, tf.RaggedTensor):
            raise ValueError(
                "`inputs` must be a dense tensor; map the converter over "
                "single images before batching. Received a RaggedTensor."
            )
        images = tf.convert_to_tensor(images)
        dtype_name = keras.backend.standardize_dtype(images.dtype.name)
        if images.shape.rank is None:
            raise ValueError(
                "`inputs` must have a known rank (3 or 4) inside tf.data. "
                "Received a tensor of unknown rank."
            )
        static = tuple(images.shape.as_list())
        self._validate(static, dtype_name)
        xp = _TFOps()
        unbatched = len(static) == 3
        x = images[None] if unbatched else images
        out_h, out_w = self.image_size
        fixed = self._integer_path(dtype_name)
        flavour = self._flavour(fixed)
        height, width = static[-3], static[-2]

        if height is not None and width is not None:
            plan = self._static_plan(static, dtype_name)
            return _run_static(xp, images, plan)
        x = self._convert_tf_dynamic(x, dtype_name, fixed, flavour)
        x = _normalize(xp, x, self.mean, self.std, self.compute_dtype)
        batch = static[0] if not unbatched else 1
        x = tf.ensure_shape(x, (batch, out_h, out_w, 3))
        if unbatched:
            x = x[0]
        return x

    def _convert_tf_dynamic(self, x, dtype_name, fixed, flavour):
        """Crop and resample when height/width are only known at run time."""
        import tensorflow as tf

        xp = _TFOps()
        out_h, out_w = self.image_size
        crop_fraction, mode = self.crop_fraction, self.mode
        shape = tf.shape(x)

        def crop_box(height, width):
            box = _crop_box(int(height), int(width), crop_fraction, mode)
            if box[2] < 1 or box[3] < 1:
                raise ValueError(
                    "`inputs` are too small to centre-crop with "
                    f"crop_fraction={crop_fraction}: received an image of "
                    f"height {int(height)} and width {int(width)}."
                )
            return np.asarray(box, dtype=np.int32)

        box = tf.numpy_function(
            crop_box, [shape[1], shape[2]], tf.int32, stateful=False
        )
        box = tf.reshape(box, (4,))
        x = tf.slice(
            x,
            tf.stack([0, box[0], box[1], 0]),
            tf.stack([-1, box[2], box[3], -1]),
        )
        pixels = "float"
        if fixed and dtype_name != "uint8":
            pixels = "floor_clip" if "float" in dtype_name else "clip"
        x = _to_pixels(xp, x, pixels)

        def plan_arrays(in_size, out_size):
            # Same-size axes resample by the identity, as the references
            # (which skip them) do: exact in float and in fixed point.
            plan = _axis_plan(int(in_size), int(out_size), flavour, fixed)
            if plan[0] == "float":
                return (plan[1][None], np.ones((1,), np.int32),
                        np.int32(0), np.int32(0))
            _, pieces, multipliers, bias, shift = plan
            return pieces, multipliers, np.int32(bias), np.int32(shift)

        def apply(x, in_size, out_size, axis):
            pieces, multipliers, bias, shift = tf.numpy_function(
                plan_arrays,
                [in_size, out_size],
                (tf.float32, tf.int32, tf.int32, tf.int32),
                stateful=False,
            )
            pieces = tf.reshape(pieces, (-1, out_size, in_size))
            multipliers = tf.reshape(multipliers, (-1,))
            if not fixed:
                return xp.einsum(_EQUATIONS[axis], pieces[0], x)
            bias = tf.reshape(bias, ())
            shift = tf.reshape(shift, ())
            return _apply_fixed(xp, x, pieces, multipliers, bias, shift, axis)

        crop_h, crop_w = box[2], box[3]

        def width_then_height():
            y = apply(x, crop_w, out_w, 2)
            return apply(y, crop_h, out_h, 1)

        def height_then_width():
            y = apply(x, crop_h, out_h, 1)
            return apply(y, crop_w, out_w, 2)

        if self.mode == "transformers_pil":
            dh, dw = crop_h - out_h, crop_w - out_w
            height_first = tf.logical_and(dh > 0, dh > dw * 2)
            return tf.cond(height_first, height_then_width, width_then_height)
        return width_then_height()

    # --------------------------------------------------------------- config

    def get_config(self):
        # Skip ImageConverter.get_config: its scale/offset/interpolation
        # fields are fixed by this class and not constructor arguments.
        config = super(ImageConverter, self).get_config()
        config.update(
            {
                "image_size": self.image_size,
                "crop_fraction": self.crop_fraction,
                "mean": list(self.mean),
                "std": list(self.std),
                "mode": self.mode,
            }
        )
        return config
