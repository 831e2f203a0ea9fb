"""Optical-flow input: two frames to one token per pixel.

DeepMind's flow model describes each pixel of each frame by its 3x3
neighbourhood (`patches_for_flow`), stacks the two frames along channels
(temporal space-to-depth), projects the 2 x 27 = 54 values to 64 and
concatenates Fourier positions computed at the training resolution.
"""

import keras
from keras import ops

from perceiver_keras.layers.adapters import PerceiverImageAdapter

PATCH_SIZE = 3


def flow_patches(frames):
    """`[B, T, H, W, C]` -> `[B, T, H, W, 9C]`: each pixel's 3x3 neighbourhood.

    Frames are zero-padded by one pixel; channels are ordered
    (patch row, patch column, channel), as `tf.image.extract_patches` does.
    """
    height, width = frames.shape[2], frames.shape[3]
    padded = ops.pad(frames, [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]])
    shifted = [
        padded[:, :, row:row + height, col:col + width]
        for row in range(PATCH_SIZE)
        for col in range(PATCH_SIZE)
    ]
    return ops.concatenate(shifted, axis=-1)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverFlowAdapter(PerceiverImageAdapter):
    """Frame pairs `[B, 2, H, W, C]` to tokens `[B, H * W, num_channels + P]`.

    A `PerceiverImageAdapter` with `prep_type="patches"` whose input is first
    replaced by 3x3 patches around every pixel (`flow_patches`). Defaults are
    those of DeepMind's released optical-flow model: temporal block 2 (the two
    frames become one time step), a Dense to 64 channels and 64 Fourier bands
    per axis at the training size 368 x 496.

    Args:
        inputs_are_patches: False (default): the input is frames
            `[B, 2, H, W, C]` and the adapter cuts their patches. True: the
            input is already patches `[B, 2, H, W, 9C]` (transformers'
            input, channels last), used as given, whatever cut them.
        Others: those of `PerceiverImageAdapter`; `prep_type` is always
            "patches".
    """

    def __init__(
        self,
        temporal_downsample=2,
        conv_after_patching=True,
        num_channels=64,
        num_bands=64,
        max_resolution=(368, 496),
        inputs_are_patches=False,
        **kwargs,
    ):
        prep_type = kwargs.pop("prep_type", "patches")
        if prep_type != "patches":
            raise ValueError(
                "`PerceiverFlowAdapter` only supports prep_type='patches'. "
                f"Received: prep_type={prep_type!r}."
            )
        super().__init__(
            prep_type="patches",
            temporal_downsample=temporal_downsample,
            conv_after_patching=conv_after_patching,
            num_channels=num_channels,
            num_bands=num_bands,
            max_resolution=max_resolution,
            **kwargs,
        )
        self.inputs_are_patches = bool(inputs_are_patches)

    def _patch_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 5 or shape[1] != self.temporal_downsample:
            raise ValueError(
                "`inputs` must be frames of shape [batch, "
                f"{self.temporal_downsample}, height, width, channels]. "
                f"Received shape {shape}."
            )
        if None in shape[2:]:
            raise ValueError(
                "Flow frames need a static height, width and channel count. "
                f"Received shape {shape}."
            )
        if self.inputs_are_patches:
            return shape
        return shape[:-1] + (shape[-1] * PATCH_SIZE**2,)

    def transform_shape(self, input_shape):
        return super().transform_shape(self._patch_shape(input_shape))

    def build_transform(self, input_shape):
        return super().build_transform(self._patch_shape(input_shape))

    def transform(self, inputs, training=None):
        if not self.inputs_are_patches:
            inputs = flow_patches(inputs)
        return super().transform(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["inputs_are_patches"] = self.inputs_are_patches
        return config
