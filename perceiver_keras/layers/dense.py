"""A Dense layer for `[B, N, C]` activations, fast on every backend.

Three differences from `keras.layers.Dense`, same weights and numbers:

- Inputs of rank > 2 are multiplied as a 2-D `[B*N, C]` view and reshaped
  back. XLA:CPU otherwise feeds the weight gradient of a 3-D product through
  transpose/copy fusions, and some of those products miss its fast kernel
  (about a quarter of a JAX training step).
- On JAX with a 16-bit compute dtype the product asks XLA for float32
  accumulation (`preferred_element_type`) and casts the result back. Keras
  asks for a 16-bit result, which on CPU selects a slower kernel than the
  AVX512-BF16 / AMX one (about 2.5x slower measured on this project's CPU).
  The product has its own gradient (`half_product`): JAX's transpose of a
  product with a float32 result multiplies the float32 cotangent with
  upcast operands, so the backward pass (two thirds of a training step's
  products) would run in float32.
- On torch it is one `torch.addmm` (product and bias), called directly.
"""

import functools

import keras
from keras import ops

HALF_DTYPES = ("bfloat16", "float16")


def eager_torch_tensor(x):
    """Whether `x` is a torch tensor on the torch backend (not a symbolic
    `KerasTensor`)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return isinstance(x, torch.Tensor)


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
    out = half_product(subscripts)(a, b)
    return out if float32_result else out.astype(dtype)


def einsum_transposes(subscripts):
    """The subscripts of the two gradient products of `a, b -> out`:
    `out, b -> a` and `a, out -> b`. They exist when every index of one
    operand also appears in the other operand or the output (no index
    summed within one operand) and no operand repeats an index."""
    operands, out = subscripts.replace(" ", "").split("->")
    a, b = operands.split(",")
    for operand, other in ((a, b), (b, a)):
        if len(set(operand)) != len(operand) or set(operand) - set(other + out):
            raise ValueError(
                f"`subscripts` must not repeat an index within an operand or "
                f"sum an index of one operand alone; received {subscripts!r}"
            )
    return f"{out},{b}->{a}", f"{a},{out}->{b}"


def batch_leading(subscripts, a, b):
    """`(subscripts, a, b)` of the same product with both operands
    transposed so that the batch indices (in both operands and the output)
    lead, in the output's order. XLA:CPU cannot run some 16-bit products
    with a float32 result whose batch axes lie elsewhere ("Unsupported
    element type for DotThunk::Execute: BF16 x BF16 = F32"), e.g.
    `bqhd,bhqk->bkhd`, a gradient of attention."""
    operands, out = subscripts.replace(" ", "").split("->")
    a_indices, b_indices = operands.split(",")
    batch = [i for i in out if i in a_indices and i in b_indices]
    transposed = []
    for indices, x in ((a_indices, a), (b_indices, b)):
        order = batch + [i for i in indices if i not in batch]
        if order != list(indices):
            x = x.transpose([indices.index(i) for i in order])
        transposed.append(("".join(order), x))
    (a_indices, a), (b_indices, b) = transposed
    return f"{a_indices},{b_indices}->{out}", a, b


@functools.cache
def half_product(subscripts):
    """`f(a, b)`: `einsum(subscripts, a, b)` in `a`'s 16-bit dtype (`b` is
    cast to it) with a float32 result, on JAX. Its backward pass casts the
    cotangent to `a`'s dtype and accumulates the two gradient products in
    float32 as well, then returns each in its operand's own dtype (so a
    float32 kernel gets a float32 gradient, as with float32 master
    weights)."""
    import jax
    import jax.numpy as jnp

    grad_a, grad_b = einsum_transposes(subscripts)

    def product(a, b, product_subscripts=subscripts):
        return jnp.einsum(*batch_leading(product_subscripts, a, b.astype(a.dtype)),
                          preferred_element_type=jnp.float32)

    @jax.custom_vjp
    def f(a, b):
        return product(a, b)

    def forward(a, b):
        return product(a, b), (a, b)

    def backward(residuals, cotangent):
        a, b = residuals
        g = cotangent.astype(a.dtype)
        da = product(g, b, grad_a).astype(a.dtype)
        db = product(a, g, grad_b).astype(b.dtype)
        return da, db

    f.defvjp(forward, backward)
    return f


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverDense(keras.layers.Dense):
    """`keras.layers.Dense` applied to a 2-D view of its input (see the
    module doc). Takes the same arguments."""

    def __call__(self, inputs, *args, **kwargs):
        # Eager torch: a built layer goes straight to its product. Keras'
        # `Layer.__call__` (argument binding, tree walks, scopes, tracking)
        # costs several times the product of a small latent stack, and
        # nothing of it is needed here: inputs and weights are cast to the
        # compute dtype below, Dense takes no training flag or mask.
        if (self.built and not args and not kwargs
                and self._plain_product() and eager_torch_tensor(inputs)):
            return self._torch_call(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        if self._plain_product() and eager_torch_tensor(inputs):
            return self._torch_call(inputs)
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

    def _torch_call(self, inputs):
        # One `addmm` on the 2-D view, straight in torch: the product and
        # bias add as Keras ops cost more dispatch than the small products
        # of a latent stack take (see benchmarks/README.md, torch rows).
        import torch

        dtype = getattr(torch, self.compute_dtype)
        kernel = self.kernel.value.to(dtype)
        x = inputs.reshape(-1, inputs.shape[-1]).to(dtype)
        if self.bias is None:
            out = torch.mm(x, kernel)
        else:
            out = torch.addmm(self.bias.value.to(dtype), x, kernel)
        out = out.reshape(*inputs.shape[:-1], self.units)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def _jax_half_call(self, x):
        # `.value`: the variable as an array (autocast to the compute dtype
        # where Keras autocasts; the stateless value inside a JAX step).
        x = ops.cast(x, self.compute_dtype)  # stateless_call does not cast
        out = half_product("nc,cu->nu")(x, self.kernel.value)
        if self.bias is not None:
            out = out + ops.cast(self.bias, "float32")
        out = out.astype(self.compute_dtype)
        if self.activation is not None:
            out = self.activation(out)
        return out
