"""`PerceiverResamplerEncoder`: any feature set -> a fixed set of tokens."""

import keras
from keras_hub.models import Task

from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.resampler.resampler_backbone import (
    PerceiverResamplerBackbone,
)
from perceiver_keras.models.resampler.resampler_presets import (
    builtin_backbone_config,
)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverResamplerEncoder(PerceiverTask):
    """`[B, M, C]` features (any M, optional padding mask) -> `[B, N, C']`.

    The backbone's `num_latents` tokens, optionally projected to
    `output_dim` channels by a Dense layer (with bias). Trainable with
    `fit` on any loss over the tokens; e.g. as a set pooling head, one
    latent projected to class logits (`num_latents=1`,
    `output_dim=num_classes`, labels `[B, 1]`).

    Args:
        backbone: a `PerceiverResamplerBackbone`.
        output_dim: C'; None keeps the backbone's width (converted
            checkpoints: the resampler's own output).
        preprocessor: optional preprocessor applied by fit/predict.

    Example:
    ```python
    backbone = PerceiverResamplerBackbone(
        feature_dim=2, hidden_dim=32, num_latents=1, num_layers=2,
        num_heads=4, head_dim=8,
    )
    pool = PerceiverResamplerEncoder(backbone, output_dim=3)
    pool.compile(loss=keras.losses.SparseCategoricalCrossentropy(True))
    pool.fit({"inputs": x, "padding_mask": mask}, y[:, None], epochs=10)
    ```
    """

    backbone_cls = PerceiverResamplerBackbone
    preprocessor_cls = None

    def __init__(self, backbone, output_dim=None, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_projection = None
        if output_dim is not None:
            self.output_projection = keras.layers.Dense(
                output_dim, dtype=backbone.dtype_policy,
                name="output_projection",
            )

        # === Functional model ===
        inputs = backbone.input
        tokens = backbone(inputs)
        if self.output_projection is not None:
            tokens = self.output_projection(tokens)
        super().__init__(inputs=inputs, outputs=tokens, **kwargs)

        # === Config ===
        self.output_dim = output_dim

    def compile(self, optimizer="auto", loss=None, **kwargs):
        """Default optimizer Adam(1e-3); the loss depends on what the tokens
        are for, so there is no default loss (pass one)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset` (a preset directory, e.g. one written
        by `conversion/convert_resampler.py`), plus the built-in
        architectures of `resampler_presets` with `load_weights=False`."""
        config = builtin_backbone_config(preset, load_weights)
        if config is not None:
            backbone = PerceiverResamplerBackbone(**config)
            return cls(backbone, **kwargs)
        return Task.from_preset.__func__(
            cls, preset, load_weights=load_weights, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim})
        return config
