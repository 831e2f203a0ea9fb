"""Classification of any `[batch, d1..dk, C]` input with a Perceiver."""

import keras

from perceiver_keras.layers.decoders import PerceiverClassificationDecoder
from perceiver_keras.layers.decoders import PerceiverMeanPoolDecoder
from perceiver_keras.layers.utils import check_positive
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_task import query_decoder


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
    config_arguments = (
        "num_classes", "pooling", "decoder_num_heads", "decoder_qk_channels",
        "decoder_v_channels", "decoder_query_channels",
        "decoder_use_query_residual", "activation",
    )

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
        check_positive("num_classes", num_classes)
        check_positive("decoder_num_heads", decoder_num_heads)
        if pooling not in ("query", "mean"):
            raise ValueError(
                "`pooling` must be 'query' or 'mean'. "
                f"Received: pooling={pooling!r}."
            )
        # === Layers ===
        # Set first: `Task.__init__` compiles, and the loss depends on it.
        activation = keras.activations.get(activation)
        self.activation = activation
        self.backbone = backbone
        self.preprocessor = preprocessor
        if pooling == "query":
            self.decoder = query_decoder(
                backbone, locals(), cls=PerceiverClassificationDecoder,
                num_classes=num_classes, query_channels=decoder_query_channels,
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
        self._store_config(locals())

    def default_loss(self):
        from_logits = self.activation != keras.activations.softmax
        return keras.losses.SparseCategoricalCrossentropy(from_logits)

    def default_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy("accuracy")]
