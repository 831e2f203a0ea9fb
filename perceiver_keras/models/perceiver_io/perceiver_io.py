"""Perceiver IO on custom data: any input, user-configured output queries."""

import keras

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_task import query_decoder


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverIO(PerceiverTask):
    """Outputs `[batch, O, output_channels]` from queries over an output grid.

    `O = prod(output_index_dims)`. Queries are learned ("trainable") or
    Fourier features of the output grid ("fourier"); each cross-attends to
    the latents, then a Dense gives `output_channels` per output. Use it for
    per-element regression, segmentation, or any structured output.

    Args:
        backbone: a `PerceiverBackbone`.
        output_index_dims: output grid, e.g. `(100,)` or `(64, 64)`.
        output_channels: channels per output.
        query_encoding: "fourier" or "trainable".
        query_channels: width of trainable queries (default: latent width).
        num_bands, max_resolution: Fourier query options (max_resolution
            defaults to the output grid).
        decoder_num_heads, decoder_qk_channels, decoder_v_channels,
        decoder_use_query_residual: decoder cross-attention options.
        activation: applied to the outputs (None: linear).
        preprocessor: optional preprocessor applied by fit/predict.
    """

    backbone_cls = PerceiverBackbone
    preprocessor_cls = None
    config_arguments = (
        "output_index_dims", "output_channels", "query_encoding",
        "query_channels", "num_bands", "max_resolution", "decoder_num_heads",
        "decoder_qk_channels", "decoder_v_channels",
        "decoder_use_query_residual", "activation",
    )

    def __init__(
        self,
        backbone,
        output_index_dims,
        output_channels,
        query_encoding="fourier",
        query_channels=None,
        num_bands=16,
        max_resolution=None,
        decoder_num_heads=1,
        decoder_qk_channels=None,
        decoder_v_channels=None,
        decoder_use_query_residual=False,
        activation=None,
        preprocessor=None,
        **kwargs,
    ):
        # === Layers ===
        # Set first: `Task.__init__` compiles, and the loss depends on it.
        activation = keras.activations.get(activation)
        self.activation = activation
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder = query_decoder(
            backbone, locals(), output_index_dims=output_index_dims,
            query_encoding=query_encoding, query_channels=query_channels,
            num_bands=num_bands, max_resolution=max_resolution,
            output_channels=output_channels,
        )
        self.output_activation = keras.layers.Activation(
            activation, dtype=backbone.dtype_policy, name="activation"
        )

        # === Functional model ===
        inputs = backbone.input
        outputs = self.output_activation(self.decoder(backbone(inputs)))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        output_index_dims = tuple(output_index_dims)
        self._store_config(locals())

    def default_loss(self):
        return keras.losses.MeanSquaredError()

    def default_metrics(self):
        return [keras.metrics.MeanAbsoluteError()]
