"""`PerceiverResamplerBackbone`: a feature set `[B, M, C]` -> `[B, N, D]`."""

import keras
from keras_hub.models import Backbone

from perceiver_keras.layers.resampler import PerceiverResampler
from perceiver_keras.layers.utils import ConfigArgumentsMixin
from perceiver_keras.models.attention_maps import attention_names_from
from perceiver_keras.models.attention_maps import compute_attention_maps
from perceiver_keras.models.input_validation import ValidatedInputsMixin
from perceiver_keras.models.input_validation import validate_backbone_inputs
from perceiver_keras.models.resampler.resampler_presets import (
    builtin_backbone_config,
)
from perceiver_keras.models.layout_map import LayoutMapMixin


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverResamplerBackbone(ConfigArgumentsMixin, ValidatedInputsMixin,
                                 LayoutMapMixin, Backbone):
    """A `PerceiverResampler` over a set of `feature_dim`-wide features.

    Args:
        feature_dim: channels C of each input feature.
        hidden_dim: width D of the latents. Defaults to `feature_dim` (as in
            the published resamplers); otherwise a Dense layer projects the
            features to D first.
        num_latents, num_layers, num_heads, head_dim, num_key_value_heads,
        intermediate_dim, norm, norm_epsilon, qk_norm, qk_norm_epsilon,
        mlp_activation, gated_mlp, max_num_media, max_num_frames,
        latents_initializer: see `PerceiverResampler` (defaults:
            Flamingo's choices). The backbone's `[B, M, C]` input is one
            medium of one frame: with media/frame embeddings, the first of
            each is added (as OpenFlamingo does for a single image).
        dtype: dtype policy.

    Call arguments: a dict `{"inputs": features, "padding_mask": mask}` or
    just the features `[B, M, C]`; `padding_mask` `[B, M]` (True/1 = real
    feature) is optional. Returns the latents `[B, num_latents, D]`.
    """

    # Sharded for ModelParallel (models/layout_map.py).
    layout_rules = dict(
        attention_blocks=r"resampler/block_\d+",
        mlp_blocks=r"resampler/block_\d+",
        channel_sharded=(
            "resampler/latents", "input_projection/kernel",
        ),
    )

    # The resampler's arguments the backbone takes and hands on as given.
    resampler_arguments = (
        "num_latents", "num_layers", "num_heads", "head_dim",
        "num_key_value_heads", "intermediate_dim", "norm", "norm_epsilon",
        "qk_norm", "qk_norm_epsilon", "mlp_activation", "gated_mlp",
        "max_num_media", "max_num_frames", "latents_initializer",
    )
    config_arguments = ("feature_dim", "hidden_dim", *resampler_arguments)

    def __init__(
        self,
        feature_dim,
        num_latents=64,
        num_layers=2,
        num_heads=8,
        head_dim=64,
        hidden_dim=None,
        num_key_value_heads=None,
        intermediate_dim=None,
        norm="layer_norm",
        norm_epsilon=1e-5,
        qk_norm=False,
        qk_norm_epsilon=1e-5,
        mlp_activation="gelu",
        gated_mlp=False,
        max_num_media=None,
        max_num_frames=None,
        latents_initializer="random_normal",
        dtype=None,
        **kwargs,
    ):
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(
                "`feature_dim` must be a positive integer. Received: "
                f"feature_dim={feature_dim!r}."
            )
        # === Layers ===
        self.input_projection = None
        if hidden_dim is not None and hidden_dim != feature_dim:
            self.input_projection = keras.layers.Dense(
                hidden_dim, dtype=dtype, name="input_projection"
            )
        arguments = locals()
        self.resampler = PerceiverResampler(
            **{name: arguments[name] for name in self.resampler_arguments},
            dtype=dtype, name="resampler",
        )

        # === Functional model ===
        features = keras.Input(shape=(None, feature_dim), name="inputs")
        padding_mask = keras.Input(
            shape=(None,), dtype="bool", name="padding_mask", optional=True
        )
        x = features
        if self.input_projection is not None:
            x = self.input_projection(x)
        latents = self.resampler(x, padding_mask=padding_mask)
        super().__init__(
            inputs={"inputs": features, "padding_mask": padding_mask},
            outputs=latents, dtype=dtype, **kwargs,
        )

        # === Config ===
        self._store_config(arguments)
        self.inputs_shape = (None, feature_dim)

    @property
    def attention_layer_names(self):
        """`cross_attention_{i}`, one per block: the latents attend to the
        features and themselves (weights `[B, heads, N, M + N]`, keys in
        that order)."""
        return [f"cross_attention_{i}" for i in range(self.num_layers)]

    def attention_maps(self, inputs, layers=None):
        """`{name: float32 NumPy [B, heads, N, M + N]}` of the blocks asked
        for (see `attention_layer_names`): the features' weights first, 0
        where `padding_mask` is False, then the latents'. Outputs are
        unchanged (see `perceiver_keras.models.attention_maps`)."""
        names = attention_names_from(layers, self.attention_layer_names)

        def forward(inputs, names):
            x = inputs["inputs"]
            if self.input_projection is not None:
                x = self.input_projection(x)
            _, maps = self.resampler(
                x, padding_mask=inputs.get("padding_mask"),
                return_attention=True,
            )
            every = dict(zip(self.attention_layer_names, maps))
            return {name: every[name] for name in names}

        return compute_attention_maps(
            self, names, self.validate_inputs(inputs), forward
        )

    @property
    def output_dim(self):
        """Width D of the output tokens."""
        return self.hidden_dim or self.feature_dim

    def validate_inputs(self, inputs):
        return validate_backbone_inputs(self, inputs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus the built-in architectures of
        `resampler_presets` (with `load_weights=False`)."""
        config = builtin_backbone_config(preset, load_weights)
        if config is not None:
            return cls(**{**config, **kwargs})
        return super().from_preset(preset, load_weights=load_weights, **kwargs)
