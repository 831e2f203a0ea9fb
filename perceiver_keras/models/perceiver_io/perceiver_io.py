"""Perceiver IO on custom data: any input, user-configured output queries."""

import keras

from perceiver_keras.layers.decoders import PerceiverQueryDecoder
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask


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
        self.activation = keras.activations.get(activation)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder = PerceiverQueryDecoder(
            output_index_dims=output_index_dims,
            query_encoding=query_encoding,
            query_channels=query_channels,
            num_bands=num_bands,
            max_resolution=max_resolution,
            output_channels=output_channels,
            num_heads=decoder_num_heads,
            qk_channels=decoder_qk_channels,
            v_channels=decoder_v_channels,
            use_query_residual=decoder_use_query_residual,
            gelu_approximate=backbone.gelu_approximate,
            dtype=backbone.dtype_policy,
            name="decoder",
        )
        self.output_activation = keras.layers.Activation(
            activation, dtype=backbone.dtype_policy, name="activation"
        )

        # === Functional model ===
        inputs = backbone.input
        outputs = self.output_activation(self.decoder(backbone(inputs)))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.output_index_dims = tuple(output_index_dims)
        self.output_channels = output_channels
        self.query_encoding = query_encoding
        self.query_channels = query_channels
        self.num_bands = num_bands
        self.max_resolution = max_resolution
        self.decoder_num_heads = decoder_num_heads
        self.decoder_qk_channels = decoder_qk_channels
        self.decoder_v_channels = decoder_v_channels
        self.decoder_use_query_residual = decoder_use_query_residual

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto",
                **kwargs):
        """Defaults: Adam(1e-3), mean squared error, mean absolute error."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = keras.losses.MeanSquaredError()
        if metrics == "auto":
            metrics = [keras.metrics.MeanAbsoluteError()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_index_dims": self.output_index_dims,
                "output_channels": self.output_channels,
                "query_encoding": self.query_encoding,
                "query_channels": self.query_channels,
                "num_bands": self.num_bands,
                "max_resolution": self.max_resolution,
                "decoder_num_heads": self.decoder_num_heads,
                "decoder_qk_channels": self.decoder_qk_channels,
                "decoder_v_channels": self.decoder_v_channels,
                "decoder_use_query_residual": self.decoder_use_query_residual,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
