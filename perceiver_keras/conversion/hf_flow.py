"""transformers' `PerceiverForOpticalFlow` as a `PerceiverOpticalFlow`.

transformers' class, with its hard-coded settings: inputs are the 3x3
patches of both frames `[B, 2, 27, H, W]`; space-to-depth over time and a
Linear 54 -> 64 (`conv_after_patches`); 64 Fourier bands per axis at
`config.train_size`; the decoder queries with the preprocessed inputs
(one head, no query residual, Linear to 2) and divides by 100. It does not
multiply by DeepMind's colab flow scale (20): `flow_scale_factor=1`.

The converted task takes what transformers' model takes, channels last:
any patches `[B, 2, H, W, 27]` (`PerceiverFlowAdapter(inputs_are_patches=
True)`), used as given. To compute flow from frames `[B, 2, H, W, 3]`, cut
their patches first (`perceiver_keras.layers.flow.flow_patches`, as
transformers' and DeepMind's examples cut them); `frames_from_patches`
checks that given patches were cut that way. The frame size is
`config.train_size`: transformers reshapes the output to it.
"""

import keras
import numpy as np

from perceiver_keras.conversion.hf_common import backbone_options
from perceiver_keras.conversion.hf_common import cross_attention_rows
from perceiver_keras.conversion.hf_common import encoder_rows
from perceiver_keras.conversion.hf_common import linear_rows
from perceiver_keras.conversion.hf_common import task_on_backbone
from perceiver_keras.layers.flow import PATCH_SIZE
from perceiver_keras.layers.flow import PerceiverFlowAdapter
from perceiver_keras.layers.flow import flow_patches
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_optical_flow import PerceiverOpticalFlow

FRAME_CHANNELS = 3
DECODER = "perceiver.decoder.decoder"
TASK_OPTIONS = dict(
    output_channels=2,
    rescale_factor=100.0,
    flow_scale_factor=1.0,
    decoder_num_heads=1,
    decoder_use_query_residual=False,
)


def _train_size(config):
    size = tuple(int(s) for s in config.get("train_size", (368, 496)))
    if len(size) != 2:
        raise ValueError(
            f"`train_size` must be (height, width). Received: {size}."
        )
    return size


def build_task(architecture, config, processor_config=None, tensor_names=()):
    size = _train_size(config)
    adapter = PerceiverFlowAdapter(
        temporal_downsample=2, conv_after_patching=True, num_channels=64,
        num_bands=64, max_resolution=size, inputs_are_patches=True,
        name="input_adapter",
    )
    backbone = PerceiverBackbone(
        inputs_shape=(2, *size, PATCH_SIZE**2 * FRAME_CHANNELS),
        input_adapter=adapter,
        **backbone_options(config),
    )
    return PerceiverOpticalFlow(backbone, **TASK_OPTIONS)


def new_task(cls, model, config, processor_config, kwargs):
    return task_on_backbone(
        cls, model, {PerceiverOpticalFlow: (TASK_OPTIONS, None)}, kwargs
    )


def weight_rows(task, architecture, config):
    decoder = task.decoder
    return [
        *linear_rows("perceiver.input_preprocessor.conv_after_patches",
                     task.backbone.input_adapter.patch_projection),
        *encoder_rows(task.backbone, "perceiver."),
        *cross_attention_rows(f"{DECODER}.decoding_cross_attention",
                              decoder.cross_attention),
        *linear_rows(f"{DECODER}.final_layer", decoder.output_dense),
    ]


def frames_from_patches(patches):
    """`[B, 2, 27, H, W]` patches -> `[B, 2, H, W, 3]` frames, checked.

    A preprocessing check, not part of the model (which computes on any
    patches, as transformers' does). The frames are the patch centres;
    ValueError unless the patches are exactly the zero-padded 3x3 patches
    of those frames.
    """
    patches = np.asarray(patches, "float32")
    channels = PATCH_SIZE**2 * FRAME_CHANNELS
    if patches.ndim != 5 or patches.shape[1:3] != (2, channels):
        raise ValueError(
            f"`inputs` must be patches [batch, 2, {channels}, height, width]."
            f" Received shape {patches.shape}."
        )
    patches = np.transpose(patches, (0, 1, 3, 4, 2))  # channels last
    centre = (PATCH_SIZE**2 // 2) * FRAME_CHANNELS
    frames = patches[..., centre:centre + FRAME_CHANNELS]
    recut = keras.ops.convert_to_numpy(flow_patches(frames))
    if not np.array_equal(recut, patches):
        raise ValueError(
            "`inputs` must be the zero-padded 3x3 patches of two frames "
            "(channels ordered patch row, patch column, colour), as "
            "transformers' and DeepMind's examples cut them. Received "
            "patches that are not."
        )
    return frames


def run_inputs(task, architecture, inputs):
    """transformers' `inputs` (patches) -> `{"logits": [B, H, W, 2]}`."""
    if inputs.get("attention_mask") is not None:
        raise ValueError("An `attention_mask` is not supported for flow.")
    patches = np.asarray(inputs["inputs"], "float32")
    channels = PATCH_SIZE**2 * FRAME_CHANNELS
    if patches.ndim != 5 or patches.shape[1:3] != (2, channels):
        raise ValueError(
            f"`inputs` must be patches [batch, 2, {channels}, height, width]."
            f" Received shape {patches.shape}."
        )
    adapter = task.backbone.input_adapter
    if adapter.inputs_are_patches:
        model_inputs = np.transpose(patches, (0, 1, 3, 4, 2))
    else:  # converted before models took patches: recover the frames
        model_inputs = frames_from_patches(patches)
    flow = task({"inputs": model_inputs}, training=False)
    return {"logits": keras.ops.convert_to_numpy(flow)}


def patches_of(frames):
    """transformers' flow input for `[B, 2, H, W, 3]` frames."""
    patches = keras.ops.convert_to_numpy(flow_patches(frames))
    return np.transpose(patches, (0, 1, 4, 2, 3))


def example_inputs(task, architecture):
    rng = np.random.default_rng(0)
    _, height, width, _ = task.backbone.inputs_shape
    shape = (1, 2, height, width, FRAME_CHANNELS)
    return {"inputs": patches_of(rng.normal(size=shape).astype("float32"))}
