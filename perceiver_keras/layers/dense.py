"""A Dense layer for `[B, N, C]` activations, fast on every backend.

Two differences from `keras.layers.Dense`, same weights and numbers:

- Inputs of rank > 2 are multiplied as a 2-D `[B*N, C]` view and reshaped
  back. XLA:CPU otherwise feeds the weight gradient of a 3-D product through
  transpose/copy fusions, and some of those products miss its fast kernel
  (about a quarter of a JAX training step).
- On JAX with a 16-bit compute dtype the product asks XLA for float32
  accumulation (`preferred_element_type`) and casts the result back. Keras
  asks for a 16-bit result, which on CPU selects a slower kernel than the
  AVX512-BF16 / AMX one (about 2.5x slower measured on this project's CPU).
"""

import keras
from keras import ops

HALF_DTYPES = ("bfloat16", "float16")


def jax_half_precision(dtype):
    """Whether products in `dtype` should accumulate in float32 on JAX."""
    return keras.backend.backend() == "jax" and dtype in HALF_DTYPES


def einsum(subscripts, a, b, float32_result=False):
    """`ops.einsum` of two operands. On JAX with 16-bit operands it
    accumulates in float32 (see the module doc) and returns the operands'
    dtype, or the float32 result itself with `float32_result`."""
    dtype = keras.backend.standardize_dtype(a.dtype)
    if not jax_half_precision(dtype):
        return ops.einsum(subscripts, a, b)
    import jax.numpy as jnp

    out = jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)
    return out if float32_result else out.astype(dtype)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverDense(keras.layers.Dense):
    """`keras.layers.Dense` applied to a 2-D view of its input (see the
    module doc). Takes the same arguments."""

    def call(self, inputs, training=None):
        flat = inputs
        if len(inputs.shape) > 2:
            width = inputs.shape[-1]
            if width is None:  # traced with a dynamic channel axis
                width = ops.shape(inputs)[-1]
            flat = ops.reshape(inputs, (-1, width))
        if self._plain_product() and jax_half_precision(self.compute_dtype):
            out = self._jax_half_call(flat)
        else:
            out = super().call(flat, training=training)
        if len(inputs.shape) > 2:
            leading = ops.shape(inputs)[:-1]
            out = ops.reshape(out, (*leading, self.units))
        return out

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras' Dense refuses to quantize subclasses unless they opt in
        # (their `call` might not handle quantized kernels). This one's
        # quantized path is Dense's own `call`, on the 2-D view.
        super().quantize(mode, type_check=False, config=config)

    def _plain_product(self):
        # Quantized kernels and LoRA keep Keras' own path.
        return self.quantization_mode is None and not self.lora_enabled

    def _jax_half_call(self, x):
        import jax.numpy as jnp

        kernel = ops.cast(self.kernel, self.compute_dtype)
        out = jnp.matmul(x, kernel, preferred_element_type=jnp.float32)
        if self.bias is not None:
            out = out + ops.cast(self.bias, "float32")
        out = out.astype(self.compute_dtype)
        if self.activation is not None:
            out = self.activation(out)
        return out
