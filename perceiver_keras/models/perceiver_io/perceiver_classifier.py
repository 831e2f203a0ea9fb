"""Classification of any `[batch, d1..dk, C]` input with a Perceiver."""

import keras

from perceiver_keras.layers.decoders import PerceiverClassificationDecoder
from perceiver_keras.layers.decoders import PerceiverMeanPoolDecoder
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverClassifier(PerceiverTask):
    """A `PerceiverBackbone` with a classification head.

    Args:
        backbone: a `PerceiverBackbone`.
        num_classes: number of classes.
        pooling: "query" (Perceiver IO: one learned query cross-attends to
            the latents) or "mean" (the original Perceiver: mean of the
            latents, LayerNorm, Dense).
        decoder_num_heads, decoder_qk_channels, decoder_v_channels,
        decoder_query_channels, decoder_use_query_residual: options of the
            query decoder's cross-attention (defaults as DeepMind's ImageNet
            models, with query residual).
        activation: None (logits) or "softmax".
        preprocessor: optional preprocessor applied by fit/predict.

    Example:
    ```python
    backbone = PerceiverBackbone(
        inputs_shape=(None, 3),
        input_adapter=PerceiverArrayAdapter(num_bands=8, max_resolution=(64,)),
        num_latents=32, latent_dim=64, num_self_attends_per_block=2,
    )
    classifier = PerceiverClassifier(backbone, num_classes=10)
    classifier.fit(x_train, y_train, epochs=3)
    ```
    """

    backbone_cls = PerceiverBackbone
    preprocessor_cls = None

    def __init__(
        self,
        backbone,
        num_classes,
        pooling="query",
        decoder_num_heads=1,
        decoder_qk_channels=None,
        decoder_v_channels=None,
        decoder_query_channels=None,
        decoder_use_query_residual=True,
        activation=None,
        preprocessor=None,
        **kwargs,
    ):
        if pooling not in ("query", "mean"):
            raise ValueError(
                "`pooling` must be 'query' or 'mean'. "
                f"Received: pooling={pooling!r}."
            )
        # === Layers ===
        # Set first: `Task.__init__` compiles, and the loss depends on it.
        self.activation = keras.activations.get(activation)
        self.backbone = backbone
        self.preprocessor = preprocessor
        if pooling == "query":
            self.decoder = PerceiverClassificationDecoder(
                num_classes,
                query_channels=decoder_query_channels,
                num_heads=decoder_num_heads,
                qk_channels=decoder_qk_channels,
                v_channels=decoder_v_channels,
                use_query_residual=decoder_use_query_residual,
                gelu_approximate=backbone.gelu_approximate,
                dtype=backbone.dtype_policy,
                name="decoder",
            )
        else:
            self.decoder = PerceiverMeanPoolDecoder(
                num_classes, dtype=backbone.dtype_policy, name="decoder"
            )
        self.output_activation = keras.layers.Activation(
            activation, dtype=backbone.dtype_policy, name="activation"
        )

        # === Functional model ===
        inputs = backbone.input
        logits = self.decoder(backbone(inputs))
        outputs = self.output_activation(logits)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.pooling = pooling
        self.decoder_num_heads = decoder_num_heads
        self.decoder_qk_channels = decoder_qk_channels
        self.decoder_v_channels = decoder_v_channels
        self.decoder_query_channels = decoder_query_channels
        self.decoder_use_query_residual = decoder_use_query_residual

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto",
                **kwargs):
        """Defaults: Adam(1e-3), sparse categorical cross-entropy, accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            from_logits = self.activation != keras.activations.softmax
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy("accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "pooling": self.pooling,
                "decoder_num_heads": self.decoder_num_heads,
                "decoder_qk_channels": self.decoder_qk_channels,
                "decoder_v_channels": self.decoder_v_channels,
                "decoder_query_channels": self.decoder_query_channels,
                "decoder_use_query_residual": self.decoder_use_query_residual,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
