"""Resampling kernels of the image converter, in NumPy, for any backend.

The crop boxes and separable resampling weights of the three reference
pipelines (DeepMind's `jax.image.resize`, torchvision's and Pillow's bicubic,
float and uint8 fixed point), computed once per size and cached, and the few
array operations that apply them through Keras ops (`KerasOps`, eager and
jitted) or TensorFlow ops (`TFOps`, inside `tf.data`). See
`perceiver_image_converter.py` for what each pipeline computes and how
exactly it is reproduced; `pixel_path` is the one place that picks a
pipeline's pixel handling.
"""

import collections
import functools
import math

import keras
import numpy as np
from keras import ops

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
def axis_plan(in_size, out_size, flavour, fixed_point):
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


def crop_box(height, width, crop_fraction, mode):
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


def pil_horizontal_first(in_h, in_w, out_h, out_w):
    """Pillow >= 13 runs the vertical pass first when height shrinks most."""
    dh, dw = in_h - out_h, in_w - out_w
    return not (dh > 0 and dh > dw * 2)


# ---------------------------------------------------------------------------
# Tensor ops: Keras ops (eager, any backend) or raw TensorFlow (tf.data).
# ---------------------------------------------------------------------------


class KerasOps:
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


class TFOps:
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


EQUATIONS = {1: "oh,bhwc->bowc", 2: "ow,bhwc->bhoc"}
PIECE_EQUATIONS = {1: "noh,bhwc->nbowc", 2: "now,bhwc->nbhoc"}


def apply_plan(xp, x, plan, axis):
    """Resamples float32 `x` `[B, H, W, C]` along `axis` (1 = H, 2 = W)."""
    if plan[0] == "float":
        return xp.einsum(EQUATIONS[axis], xp.constant(plan[1], "float32"), x)
    _, pieces, multipliers, bias, shift = plan
    return apply_fixed(
        xp,
        x,
        xp.constant(pieces, "float32"),
        xp.constant(multipliers, "int32"),
        bias,
        shift,
        axis,
    )


def apply_fixed(xp, x, pieces, multipliers, bias, shift, axis):
    """One fixed-point pass; `x` holds integers 0..255 as float32."""
    partial = xp.einsum(PIECE_EQUATIONS[axis], pieces, x)  # exact integers
    partial = xp.cast(partial, "int32")
    multipliers = xp.cast(multipliers, "int32")
    for _ in range(4):
        multipliers = xp.expand_dims(multipliers, -1)
    total = xp.sum(partial * multipliers, axis=0) + bias
    out = xp.clip(xp.right_shift(total, shift), 0, 255)
    return xp.cast(out, "float32")


StaticPlan = collections.namedtuple(
    "StaticPlan",
    ["unbatched", "box", "pixels", "flavour", "fixed", "passes", "mean",
     "std", "compute_dtype"],
)


def to_pixels(xp, x, pixels):
    """float32 pixels; the fixed-point paths need integers 0..255."""
    x = xp.cast(x, "float32")
    if pixels != "float":
        x = xp.clip(x, 0.0, 255.0)
    if pixels == "floor_clip":
        # PerceiverImageProcessorPil: `image.astype(np.uint8)`.
        x = xp.floor(x)
    return x


def normalize(xp, x, mean, std, compute_dtype):
    # (x - mean) * (1 / std): a subtract and a multiply, so that every
    # backend (XLA rewrites divisions by constants) rounds identically.
    mean = np.asarray(mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    x = x - xp.constant(mean, "float32")
    x = x * xp.constant(inv_std, "float32")
    if compute_dtype != "float32":
        x = xp.cast(x, compute_dtype)
    return x


def run_static(xp, images, plan):
    """Crop, resample and normalise images whose shape is known."""
    x = images[None] if plan.unbatched else images
    top, left, crop_h, crop_w = plan.box
    x = x[:, top : top + crop_h, left : left + crop_w, :]
    x = to_pixels(xp, x, plan.pixels)
    for axis, in_size, out_size in plan.passes:
        weights = axis_plan(in_size, out_size, plan.flavour, plan.fixed)
        x = apply_plan(xp, x, weights, axis)
    x = normalize(xp, x, plan.mean, plan.std, plan.compute_dtype)
    return x[0] if plan.unbatched else x


@functools.lru_cache(maxsize=64)
def jitted(plan):
    import jax

    return jax.jit(lambda images: run_static(KerasOps(images), images,
                                              plan))


def pixel_path(mode, dtype_name):
    """`(fixed, flavour, pixels)` of one reference pipeline and input dtype.

    `fixed`: resampling runs in the reference's uint8 fixed point (Pillow
    always; torchvision on integer images). `flavour`: whose resampling
    weights (`_resample_weights`). `pixels`: how inputs become pixels
    (`to_pixels`).
    """
    fixed = mode == "transformers_pil" or (
        mode == "transformers" and "int" in dtype_name
    )
    flavour = {"deepmind": "jax", "transformers_pil": "pil"}.get(
        mode, "torch" if fixed else "torch32"
    )
    pixels = "float"
    if fixed and dtype_name != "uint8":
        pixels = "floor_clip" if "float" in dtype_name else "clip"
    return fixed, flavour, pixels
