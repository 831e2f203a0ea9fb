"""`keras.layers.LayerNormalization` with a direct path on eager torch.

Through Keras' `Layer.__call__` (argument binding, tree walks, scopes,
tracking) and `ops.layer_normalization`'s conversions, a LayerNorm takes
about 0.22 ms on eager torch, five times torch's own `layer_norm` (0.04 ms)
on a small latent array, and a Perceiver calls three or four per block (see
benchmarks/README.md, small-model `fit`). A built layer called eagerly on
torch with nothing for Keras to convert goes straight to `F.layer_norm`,
as Keras' own torch path does; every other call is Keras' own.
"""

import keras

from perceiver_keras.layers.dense import eager_torch_tensor


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (same arguments, weights and
    numbers) with the direct eager-torch path described above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The direct path computes exactly this layer: last axis (given as
        # -1, as `layer_norm()` builds it), both weights, no rms_scaling.
        self._plain = (self.axis in (-1, [-1]) and self.center
                       and self.scale and not self.rms_scaling)

    def __call__(self, inputs, *args, **kwargs):
        # Keras' path whenever it would change something first: inputs
        # cast to the compute dtype (autocast), a mask carried along.
        if (self._plain and self.built and not args and not kwargs
                and eager_torch_tensor(inputs)
                and str(inputs.dtype) == f"torch.{self.compute_dtype}"
                and getattr(inputs, "_keras_mask", None) is None):
            return self._torch_call(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def _torch_call(self, x):
        import torch
        import torch.nn.functional as F

        # As `ops.layer_normalization`: at least float32, then back.
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = F.layer_norm(
            x.to(dtype), (x.shape[-1],), self.gamma.value.to(dtype),
            self.beta.value.to(dtype), self.epsilon,
        )
        return out.to(x.dtype)
