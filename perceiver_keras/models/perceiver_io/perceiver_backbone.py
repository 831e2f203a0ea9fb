"""The Perceiver encoder as a keras-hub `Backbone`."""

import keras
from keras_hub.models import Backbone

from perceiver_keras.layers.adapters import PerceiverArrayAdapter
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.layers.blocks import PerceiverCrossAttentionBlock
from perceiver_keras.layers.blocks import PerceiverSelfAttentionBlock
from perceiver_keras.layers.position_encoding import TrainablePositionEncoding
from perceiver_keras.layers.utils import check_positive
from perceiver_keras.layers.utils import check_rate
from perceiver_keras.layers.utils import deserialize_with_dtype
from perceiver_keras.models import presets
from perceiver_keras.models.attention_maps import attention_names_from
from perceiver_keras.models.attention_maps import compute_attention_maps
from perceiver_keras.models.input_validation import ValidatedInputsMixin
from perceiver_keras.models.input_validation import validate_backbone_inputs
from perceiver_keras.models.layout_map import LayoutMapMixin


def attention_schedule(cross_attends, self_attends, num_blocks,
                       num_cross_attends):
    """`[(name, block layer)]` for every attention application, in order."""
    schedule = []
    for block in range(num_blocks):
        if block < num_cross_attends:
            layer = cross_attends[min(block, len(cross_attends) - 1)]
            schedule.append((f"cross_attention_{block}", layer))
        for i, layer in enumerate(self_attends):
            index = block * len(self_attends) + i
            schedule.append((f"self_attention_{index}", layer))
    return schedule


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverBackbone(ValidatedInputsMixin, LayoutMapMixin, Backbone):
    """Latents cross-attend to the input, then a shared self-attention stack.

    The input goes through `input_adapter` (positions, convolution, patches
    or token embedding) to `[B, M, C]` tokens. A learned latent array
    `[num_latents, latent_dim]` cross-attends to them (cost linear in M),
    then `num_blocks` repetitions of `num_self_attends_per_block`
    self-attention layers run on the latents. The layers of one block are
    reused by every repetition, so the parameter count does not depend on
    `num_blocks`. With `num_cross_attends > 1` the latents re-read the input
    before each of the first `num_cross_attends` blocks, as in the original
    Perceiver; re-reads after the first share one layer when
    `share_cross_attend_weights`.

    Args:
        inputs_shape: shape of one example, without the batch axis, e.g.
            `(None, 3)` for point sets, `(224, 224, 3)` for images, `(2048,)`
            for token ids. `None` marks sizes that may vary between calls
            (only where the positions allow it).
        input_adapter: a `PerceiverArrayAdapter`, `PerceiverImageAdapter` or
            `PerceiverTokenAdapter` (or its config); None means the input is
            already `[batch, M, C]` tokens.
        num_latents, latent_dim: size of the latent array.
        num_blocks, num_self_attends_per_block: depth of the latent stack.
        num_cross_attend_heads, num_self_attend_heads: attention heads.
        cross_attend_widening_factor, self_attend_widening_factor: MLP width
            multipliers.
        cross_attention_qk_channels, cross_attention_v_channels: channel
            counts of the encoder cross-attention (default: input width).
        self_attention_qk_channels, self_attention_v_channels: channel
            counts of self-attention (default: `latent_dim`).
        use_query_residual: residual around the encoder cross-attention.
        num_cross_attends, share_cross_attend_weights: iterative re-reads.
        dropout, attention_dropout: dropout rates.
        gelu_approximate: tanh GELU (DeepMind) or exact erf (transformers).
        latent_init_scale: init stddev of the latent array.
        attention_implementation: "auto", "plain", "chunked" or "fused", for
            every attention layer (see `PerceiverAttention`). "auto" streams
            the encoder cross-attention over key/value chunks once its
            scores would be large, so memory stays linear in M.
        key_value_chunk_size: keys per chunk when chunked (None: automatic).
        remat: gradient checkpointing of every block (the chunked
            cross-attention chunk by chunk), for training on long inputs.

    Call arguments: a dict `{"inputs": x, "padding_mask": m}` or just `x`;
    `padding_mask` (bool, over the input positions) is optional. Returns the
    latents `[B, num_latents, latent_dim]`.
    """

    # Sharded for ModelParallel (models/layout_map.py).
    layout_rules = dict(
        attention_blocks=r"self_attend_\d+",
        mlp_blocks=r"(cross|self)_attend_\d+",
        channel_sharded=(
            "latents/embeddings",
            r".+/(token|position)_embedding/embeddings",
        ),
    )

    def __init__(
        self,
        inputs_shape,
        input_adapter=None,
        num_latents=256,
        latent_dim=512,
        num_blocks=1,
        num_self_attends_per_block=6,
        num_cross_attend_heads=1,
        num_self_attend_heads=8,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
        cross_attention_qk_channels=None,
        cross_attention_v_channels=None,
        self_attention_qk_channels=None,
        self_attention_v_channels=None,
        use_query_residual=True,
        num_cross_attends=1,
        share_cross_attend_weights=True,
        dropout=0.0,
        attention_dropout=0.0,
        gelu_approximate=True,
        latent_init_scale=0.02,
        attention_implementation="auto",
        key_value_chunk_size=None,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        for name in (
            "num_latents", "latent_dim", "num_blocks",
            "num_self_attends_per_block", "num_cross_attend_heads",
            "num_self_attend_heads", "cross_attend_widening_factor",
            "self_attend_widening_factor", "num_cross_attends",
        ):
            check_positive(name, locals()[name])
        for name in (
            "cross_attention_qk_channels", "cross_attention_v_channels",
            "self_attention_qk_channels", "self_attention_v_channels",
            "key_value_chunk_size",
        ):
            check_positive(name, locals()[name], optional=True)
        check_rate("dropout", dropout)
        check_rate("attention_dropout", attention_dropout)
        check_positive("latent_init_scale", latent_init_scale, number=float)
        self_qk = self_attention_qk_channels or latent_dim
        if self_qk % num_self_attend_heads:
            raise ValueError(
                "The self-attention's query/key channels "
                "(`self_attention_qk_channels`, default `latent_dim`) must be "
                f"divisible by `num_self_attend_heads`={num_self_attend_heads}"
                f". Received: {self_qk}."
            )
        if not 1 <= num_cross_attends <= num_blocks:
            raise ValueError(
                "`num_cross_attends` must be between 1 and `num_blocks`="
                f"{num_blocks}. Received: num_cross_attends={num_cross_attends}."
            )
        inputs_shape = tuple(inputs_shape)
        # === Layers ===
        if isinstance(input_adapter, dict):
            input_adapter = deserialize_with_dtype(input_adapter, dtype)
        if input_adapter is None:
            input_adapter = PerceiverArrayAdapter(
                position_encoding=None, dtype=dtype, name="input_adapter"
            )
        is_tokens = isinstance(input_adapter, PerceiverTokenAdapter)
        token_width = input_adapter.compute_output_shape(
            (None,) + inputs_shape
        )[-1]
        cross_qk = cross_attention_qk_channels or token_width
        if cross_qk % num_cross_attend_heads:
            raise ValueError(
                "The cross-attention's query/key channels "
                "(`cross_attention_qk_channels`, default: the width of the "
                f"input adapter's tokens, {token_width}) must be divisible by "
                f"`num_cross_attend_heads`={num_cross_attend_heads}. "
                f"Received: {cross_qk}."
            )
        self.input_adapter = input_adapter
        self.latents = TrainablePositionEncoding(
            num_latents,
            latent_dim,
            latent_init_scale,
            dtype=dtype,
            name="latents",
        )
        block_options = dict(
            dropout=dropout,
            attention_dropout=attention_dropout,
            gelu_approximate=gelu_approximate,
            attention_implementation=attention_implementation,
            key_value_chunk_size=key_value_chunk_size,
            remat=remat,
            dtype=dtype,
        )
        num_cross_layers = 1 if num_cross_attends == 1 else (
            2 if share_cross_attend_weights else num_cross_attends
        )
        self.cross_attends = [
            PerceiverCrossAttentionBlock(
                num_heads=num_cross_attend_heads,
                qk_channels=cross_attention_qk_channels,
                v_channels=cross_attention_v_channels,
                widening_factor=cross_attend_widening_factor,
                use_query_residual=use_query_residual,
                name=f"cross_attend_{i}",
                **block_options,
            )
            for i in range(num_cross_layers)
        ]
        self.self_attends = [
            PerceiverSelfAttentionBlock(
                num_heads=num_self_attend_heads,
                qk_channels=self_attention_qk_channels,
                v_channels=self_attention_v_channels,
                widening_factor=self_attend_widening_factor,
                name=f"self_attend_{i}",
                **block_options,
            )
            for i in range(num_self_attends_per_block)
        ]

        # === Functional model ===
        inputs = keras.Input(
            shape=inputs_shape,
            dtype="int32" if is_tokens else None,
            name="inputs",
        )
        model_inputs = {"inputs": inputs}
        padding_mask = None
        if input_adapter.supports_padding_mask:
            mask_shape = inputs_shape if is_tokens else inputs_shape[:-1]
            padding_mask = keras.Input(
                shape=mask_shape, dtype="bool", name="padding_mask",
                optional=True,
            )
            model_inputs["padding_mask"] = padding_mask
        x, _ = self._encode(
            model_inputs, attention_schedule(
                self.cross_attends, self.self_attends, num_blocks,
                num_cross_attends,
            ),
        )
        super().__init__(inputs=model_inputs, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.inputs_shape = inputs_shape
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.num_blocks = num_blocks
        self.num_self_attends_per_block = num_self_attends_per_block
        self.num_cross_attend_heads = num_cross_attend_heads
        self.num_self_attend_heads = num_self_attend_heads
        self.cross_attend_widening_factor = cross_attend_widening_factor
        self.self_attend_widening_factor = self_attend_widening_factor
        self.cross_attention_qk_channels = cross_attention_qk_channels
        self.cross_attention_v_channels = cross_attention_v_channels
        self.self_attention_qk_channels = self_attention_qk_channels
        self.self_attention_v_channels = self_attention_v_channels
        self.use_query_residual = use_query_residual
        self.num_cross_attends = num_cross_attends
        self.share_cross_attend_weights = share_cross_attend_weights
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.gelu_approximate = gelu_approximate
        self.latent_init_scale = latent_init_scale
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size
        self.remat = remat

    def _encode(self, inputs, schedule, attention_names=()):
        """The encoder on the input dict; also returns `{name: weights}`
        for the attention layers named (see `attention_layer_names`)."""
        padding_mask = inputs.get("padding_mask")
        tokens = self.input_adapter(inputs["inputs"])
        x = self.latents(tokens)
        maps = {}
        for name, layer in schedule:
            arguments = {"return_attention": True} if (
                name in attention_names
            ) else {}
            if name.startswith("cross"):
                x = layer(x, tokens, key_mask=padding_mask, **arguments)
            else:
                x = layer(x, **arguments)
            if arguments:
                x, maps[name] = x
        return x, maps

    @property
    def attention_layer_names(self):
        """Names of the attention applications, in order:
        `cross_attention_{i}` (the i-th read of the input; weights
        `[B, cross heads, num_latents, M]`) and `self_attention_{j}` (the
        j-th self-attention layer run, counting every repetition of the
        shared block; weights `[B, self heads, num_latents, num_latents]`).
        """
        return [name for name, _ in self._schedule()]

    def _schedule(self):
        return attention_schedule(
            self.cross_attends, self.self_attends, self.num_blocks,
            self.num_cross_attends,
        )

    def attention_maps(self, inputs, layers=None):
        """The attention weights of the layers asked for, on `inputs`.

        Args:
            inputs: what the backbone takes (an array or the input dict).
            layers: names from `attention_layer_names`, one name, or None
                (all).

        Returns:
            `{name: float32 NumPy [B, heads, queries, keys]}`. Weights sum
            to 1 over the keys, masked keys get 0, and a query row with no
            allowed key is all zeros (its output is wiped). A chunked layer
            computes them in a second pass over its chunks; layers not
            asked for compute none. The backbone's own outputs and graph
            are unchanged (see `perceiver_keras.models.attention_maps`).
        """
        names = attention_names_from(layers, self.attention_layer_names)
        return compute_attention_maps(
            self, names, self.validate_inputs(inputs),
            lambda inputs, names: self._encode(
                inputs, self._schedule(), names
            )[1],
        )

    @property
    def token_width(self):
        """Width C of the `[B, M, C]` tokens the latents attend to."""
        return self.input_adapter.compute_output_shape(
            (None,) + self.inputs_shape
        )[-1]

    def validate_inputs(self, inputs):
        return validate_backbone_inputs(self, inputs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus DeepMind's six built-in names.

        See `perceiver_keras.models.presets`.
        """
        return presets.from_preset(
            cls, preset, load_weights, kwargs,
            lambda p: super(PerceiverBackbone, cls).from_preset(
                p, load_weights=load_weights, **kwargs
            ),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "inputs_shape": self.inputs_shape,
                "input_adapter": keras.layers.serialize(self.input_adapter),
                "num_latents": self.num_latents,
                "latent_dim": self.latent_dim,
                "num_blocks": self.num_blocks,
                "num_self_attends_per_block": self.num_self_attends_per_block,
                "num_cross_attend_heads": self.num_cross_attend_heads,
                "num_self_attend_heads": self.num_self_attend_heads,
                "cross_attend_widening_factor": (
                    self.cross_attend_widening_factor
                ),
                "self_attend_widening_factor": self.self_attend_widening_factor,
                "cross_attention_qk_channels": self.cross_attention_qk_channels,
                "cross_attention_v_channels": self.cross_attention_v_channels,
                "self_attention_qk_channels": self.self_attention_qk_channels,
                "self_attention_v_channels": self.self_attention_v_channels,
                "use_query_residual": self.use_query_residual,
                "num_cross_attends": self.num_cross_attends,
                "share_cross_attend_weights": self.share_cross_attend_weights,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "gelu_approximate": self.gelu_approximate,
                "latent_init_scale": self.latent_init_scale,
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
                "remat": self.remat,
            }
        )
        return config
