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

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from perceiver_keras.models.perceiver_io.image_resampling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODES,
    EQUATIONS,
    KerasOps,
    StaticPlan,
    TFOps,
    apply_fixed,
    axis_plan,
    crop_box,
    jitted,
    normalize,
    pil_horizontal_first,
    run_static,
    to_pixels,
    pixel_path,
)
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
            return jitted(plan)(images)
        return run_static(KerasOps(images), images, plan)

    def _static_plan(self, shape, dtype_name):
        """Hashable description of the whole computation for one shape."""
        height, width = int(shape[-3]), int(shape[-2])
        top, left, crop_h, crop_w = crop_box(
            height, width, self.crop_fraction, self.mode
        )
        self._check_crop(shape, crop_h, crop_w)
        out_h, out_w = self.image_size
        fixed, flavour, pixels = pixel_path(self.mode, dtype_name)
        # (axis, in_size, out_size) in pass order; same-size axes are skipped
        # as the references skip them.
        passes = [(2, crop_w, out_w), (1, crop_h, out_h)]
        if self.mode == "transformers_pil" and not (
            pil_horizontal_first(crop_h, crop_w, out_h, out_w)
        ):
            passes.reverse()
        passes = tuple(p for p in passes if p[1] != p[2])
        return StaticPlan(
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
        xp = TFOps()
        unbatched = len(static) == 3
        x = images[None] if unbatched else images
        out_h, out_w = self.image_size
        height, width = static[-3], static[-2]

        if height is not None and width is not None:
            plan = self._static_plan(static, dtype_name)
            return run_static(xp, images, plan)
        x = self._convert_tf_dynamic(x, dtype_name)
        x = normalize(xp, x, self.mean, self.std, self.compute_dtype)
        batch = static[0] if not unbatched else 1
        x = tf.ensure_shape(x, (batch, out_h, out_w, 3))
        if unbatched:
            x = x[0]
        return x

    def _convert_tf_dynamic(self, x, dtype_name):
        """Crop and resample when height/width are only known at run time."""
        import tensorflow as tf

        fixed, flavour, pixels = pixel_path(self.mode, dtype_name)
        xp = TFOps()
        out_h, out_w = self.image_size
        crop_fraction, mode = self.crop_fraction, self.mode
        shape = tf.shape(x)

        def box_of(height, width):
            box = crop_box(int(height), int(width), crop_fraction, mode)
            if box[2] < 1 or box[3] < 1:
                raise ValueError(
                    "`inputs` are too small to centre-crop with "
                    f"crop_fraction={crop_fraction}: received an image of "
                    f"height {int(height)} and width {int(width)}."
                )
            return np.asarray(box, dtype=np.int32)

        box = tf.numpy_function(
            box_of, [shape[1], shape[2]], tf.int32, stateful=False
        )
        box = tf.reshape(box, (4,))
        x = tf.slice(
            x,
            tf.stack([0, box[0], box[1], 0]),
            tf.stack([-1, box[2], box[3], -1]),
        )
        x = to_pixels(xp, x, pixels)

        def plan_arrays(in_size, out_size):
            # Same-size axes resample by the identity, as the references
            # (which skip them) do: exact in float and in fixed point.
            plan = axis_plan(int(in_size), int(out_size), flavour, fixed)
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
                return xp.einsum(EQUATIONS[axis], pieces[0], x)
            bias = tf.reshape(bias, ())
            shift = tf.reshape(shift, ())
            return apply_fixed(xp, x, pieces, multipliers, bias, shift, axis)

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
