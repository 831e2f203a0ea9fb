"""Optical flow between two frames with Perceiver IO."""

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.flow import PerceiverFlowAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_task import query_decoder


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverOpticalFlow(PerceiverTask):
    """Flow `[B, H, W, 2]` from a frame pair `[B, 2, H, W, C]`.

    The backbone's input adapter (a `PerceiverFlowAdapter`) turns every pixel
    into a token; the latents read them. The decoder queries are those same
    tokens, so each pixel asks the latents for its own displacement. The
    decoder output is divided by `rescale_factor` (the scale the model was
    trained at) and multiplied by `flow_scale_factor`: DeepMind's colab uses
    20 to get flow in pixels; 1 gives the raw model output (as transformers).

    The frame size is fixed by the backbone's `inputs_shape` (the training
    size); `predict_tiled` computes flow for larger frames from overlapping
    windows of that size.

    Args:
        backbone: a `PerceiverBackbone` whose `input_adapter` is a
            `PerceiverFlowAdapter` and whose `inputs_shape` is
            `(2, H, W, C)`.
        output_channels: channels per pixel (2: horizontal, vertical).
        rescale_factor: the decoder output is divided by it.
        flow_scale_factor: the result is multiplied by it.
        decoder_num_heads, decoder_qk_channels, decoder_v_channels,
        decoder_use_query_residual: options of the decoder cross-attention
            (DeepMind: one head, no query residual).
        preprocessor: optional preprocessor applied by fit/predict.
    """

    backbone_cls = PerceiverBackbone
    preprocessor_cls = None
    config_arguments = (
        "output_channels", "rescale_factor", "flow_scale_factor",
        "decoder_num_heads", "decoder_qk_channels", "decoder_v_channels",
        "decoder_use_query_residual",
    )
    default_learning_rate = 1e-4

    def __init__(
        self,
        backbone,
        output_channels=2,
        rescale_factor=100.0,
        flow_scale_factor=1.0,
        decoder_num_heads=1,
        decoder_qk_channels=None,
        decoder_v_channels=None,
        decoder_use_query_residual=False,
        preprocessor=None,
        **kwargs,
    ):
        if not isinstance(backbone.input_adapter, PerceiverFlowAdapter):
            raise ValueError(
                "`backbone.input_adapter` must be a `PerceiverFlowAdapter`. "
                f"Received: {type(backbone.input_adapter).__name__}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder = query_decoder(
            backbone, locals(), query_encoding=None,
            output_channels=output_channels,
        )

        # === Functional model ===
        inputs = backbone.input
        latents = backbone(inputs)
        # The pixel tokens are both what the latents read and the queries.
        queries = backbone.input_adapter(inputs["inputs"])
        flow = self.decoder(latents, queries=queries)
        height, width = backbone.inputs_shape[1:3]
        flow = ops.reshape(flow, (-1, height, width, output_channels))
        # Two steps, as DeepMind: divide in the model, multiply in the colab.
        flow = flow / rescale_factor * flow_scale_factor
        super().__init__(inputs=inputs, outputs=flow, **kwargs)

        # === Config ===
        self._store_config(locals())

    @property
    def window_size(self):
        """`(height, width)` of the frames the model takes in one call."""
        return tuple(self.backbone.inputs_shape[1:3])

    def predict_tiled(self, frames, min_overlap=20, batch_size=8):
        """Flow for frames of any size at least `window_size`.

        As DeepMind's colab: windows of the model's size are laid out every
        `window - min_overlap` pixels, the last one flush with the far edge;
        each window's flow is weighted by the pixel's distance to the
        window's nearest edge (1 at the edge) and the weighted flows are
        averaged.

        Args:
            frames: `[B, 2, H, W, C]` frame pairs, preprocessed as for
                `predict`.
            min_overlap: least overlap of neighbouring windows, in pixels.
            batch_size: windows per model call.

        Returns:
            NumPy `[B, H, W, output_channels]` flow.
        """
        frames = np.asarray(frames)
        expected = (2,) + tuple(self.backbone.inputs_shape[-1:])
        if frames.ndim != 5 or (frames.shape[1], frames.shape[4]) != expected:
            raise ValueError(
                "`frames` must have shape [batch, 2, height, width, "
                f"{expected[1]}]. Received: frames.shape={frames.shape}."
            )
        if frames.dtype.kind != "f":
            raise ValueError(
                "`frames` must hold float data (normalised as for `predict`)."
                f" Received dtype {frames.dtype}."
            )
        height, width = frames.shape[2:4]
        win_h, win_w = self.window_size
        origins = window_origins((height, width), self.window_size, min_overlap)
        windows = np.stack(
            [frames[:, :, y:y + win_h, x:x + win_w] for y, x in origins], 1
        )  # [B, N, 2, h, w, C]
        windows = windows.reshape((-1,) + windows.shape[2:])
        flows = [
            ops.convert_to_numpy(
                self.predict_on_batch({"inputs": windows[i:i + batch_size]})
            )
            for i in range(0, len(windows), batch_size)
        ]
        flows = np.concatenate(flows).reshape(
            (len(frames), len(origins), win_h, win_w, -1)
        )
        return stitch_windows(flows, origins, (height, width))

    def default_loss(self):
        return keras.losses.MeanSquaredError()

    def default_metrics(self):
        return [keras.metrics.MeanAbsoluteError()]


def window_origins(frame_size, window_size, min_overlap=20):
    """Top-left corners `(y, x)` of the windows covering a frame.

    Windows start every `window - min_overlap` pixels; the last one on each
    axis is moved to end exactly at the frame's edge (DeepMind's
    `compute_grid_indices`, repeated windows included). Other windows that
    would cross the edge are moved back likewise (the colab would cut them
    short and fail).
    """
    if not 0 <= min_overlap < min(window_size):
        raise ValueError(
            "`min_overlap` must be >= 0 and smaller than the window size "
            f"{tuple(window_size)}. Received: min_overlap={min_overlap}."
        )
    if any(f < w for f, w in zip(frame_size, window_size)):
        raise ValueError(
            f"Frames must be at least {tuple(window_size)} (the model's "
            f"size). Received frames of size {tuple(frame_size)}; pad or "
            "resize them."
        )
    starts = [
        [min(start, frame - window)
         for start in range(0, frame, window - min_overlap)]
        for frame, window in zip(frame_size, window_size)
    ]
    return [(y, x) for y in starts[0] for x in starts[1]]


def window_weights(window_size):
    """`[h, w, 1]` weights: 1 + distance to the window's nearest edge."""
    rows, cols = (np.arange(n) for n in window_size)
    to_edge_y = np.minimum(rows + 1, window_size[0] - rows)
    to_edge_x = np.minimum(cols + 1, window_size[1] - cols)
    return np.minimum(to_edge_y[:, None], to_edge_x[None, :])[..., None]


def stitch_windows(window_flows, origins, frame_size):
    """Weighted average of overlapping window outputs.

    Args:
        window_flows: `[B, N, h, w, C]`, one output per window in `origins`.
        origins: the windows' top-left corners.
        frame_size: `(H, W)` of the whole frame.

    Returns:
        `[B, H, W, C]` float32.
    """
    batch, _, win_h, win_w, channels = window_flows.shape
    weights = window_weights((win_h, win_w)).astype(np.float64)
    total = np.zeros((batch, *frame_size, channels))
    weight_sum = np.zeros((*frame_size, 1))
    for flow, (y, x) in zip(np.moveaxis(window_flows, 1, 0), origins):
        total[:, y:y + win_h, x:x + win_w] += flow * weights
        weight_sum[y:y + win_h, x:x + win_w] += weights
    return (total / weight_sum).astype(np.float32)
