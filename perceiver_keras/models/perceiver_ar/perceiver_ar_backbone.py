"""Perceiver AR (Hawthorne et al. 2022) as a keras-hub `Backbone`.

The last `N` positions of a sequence become the latents, one per position.
They cross-attend causally to the whole context (cost O(N*L)), then a
causal self-attention stack runs on the latents only (O(N^2) per layer).

Both public implementations are options of this one model:

- DeepMind (google-research/perceiver-ar, Haiku): `mask_rules="deepmind"`
  (right padding; latents end at each row's last token; invalid latents are
  masked as keys of self-attention), `latent_query="linear"`, biases
  everywhere, squared-ReLU MLPs, rotary with `linspace` frequencies on a
  fraction of channels and heads, or absolute positions from a (sinusoidal)
  table, positions counted from 1, a final LayerNorm and a separate output
  layer.
- krasserm (perceiver-io, PyTorch): `mask_rules="krasserm"` (left padding;
  latents are the last `N` positions; self-attention masks causally only),
  `latent_query="identity"`, `latents_in_keys=True` (the latents enter the
  cross-attention keys through the query LayerNorm), no q/k/v or MLP
  biases, exact-erf GELU, RoFormer rotary frequencies (base 10000) on the
  first half of each head (or all of it), rotary in the first
  `num_rotary_self_attention_layers` self-attention layers only, learned
  absolute positions counted from 0, and logits tied to the token embedding
  plus a bias.

Call arguments: `{"token_ids": [B, L] int, "padding_mask": [B, L] bool}`
and optionally `num_latents` (default: `max_latents`); returns the latent
hidden states `[B, num_latents, hidden_dim]`. `token_logits(hidden)` gives
the next-token logits of each latent.
"""

import inspect

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    check_implementation,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    PerceiverARCrossAttentionBlock,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    PerceiverARSelfAttentionBlock,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    PerceiverARTokenEmbedding,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    activation_fn,
)
from perceiver_keras.models.layout_map import LayoutMapMixin
from perceiver_keras.models.attention_maps import attention_names_from
from perceiver_keras.models.attention_maps import call_recording
from perceiver_keras.models.attention_maps import compute_attention_maps

MASK_RULES = ("deepmind", "krasserm")
LATENT_QUERIES = ("identity", "linear", "mlp", "learned")
POSITION_EMBEDDINGS = (None, "learned", "sinusoidal")
PREFIX_DROPOUT_KINDS = ("krasserm", "deepmind")


def sinusoidal_table(rows, channels):
    """DeepMind's table: sin in the first C/2 channels, cos in the next C/2,
    `div = exp(-ln(1e4) / (C/2 - 1) * arange(C/2))` (note the `C/2 - 1`)."""
    half = channels // 2
    table = np.zeros((rows, channels), np.float32)
    position = np.arange(rows)[:, None]
    div = np.exp(np.arange(half) * (-np.log(10000.0) / (half - 1)))
    table[:, :half] = np.sin(position * div)
    table[:, half:2 * half] = np.cos(position * div)
    return table


def token_positions(mask, position_start=0, terminal_relative=False):
    """Position of every token, `[B, L]` int32.

    Valid tokens count from `position_start` (krasserm: 0, so left pads shift
    the positions; DeepMind's datasets: 1); pads get 0. With
    `terminal_relative` (DeepMind without positions from data) token `i` of
    a right-padded row of length `n` gets `n - 1 - i`, pads `L - 1 + n - i`.
    """
    valid = ops.cast(mask, "int32")
    if terminal_relative:
        length = ops.shape(valid)[1]
        n = ops.sum(valid, axis=1, keepdims=True)
        i = ops.arange(length, dtype="int32")[None, :]
        return ops.where(i < n, n - 1 - i, length - 1 + n - i)
    count = ops.cumsum(valid, axis=1)
    return ops.where(valid > 0, count - 1 + position_start, 0)


def latent_indices(mask, num_latents, mask_rules):
    """Index of the input each latent sits at, `[B, N]` int32 (-1: none).

    DeepMind (`final_block`): latent k sits at `n - N + k` where `n` ends the
    row's tokens (right padding), -1 where that is negative. krasserm: the
    last `N` positions of the array (inputs are left-padded).
    """
    length = ops.shape(mask)[1]
    k = ops.arange(num_latents, dtype="int32")[None, :]
    if mask_rules == "krasserm":
        end = ops.full_like(ops.cast(mask[:, :1], "int32"), length)
    else:
        steps = ops.arange(1, length + 1, dtype="int32")[None, :]
        end = ops.max(ops.where(mask, steps, 0), axis=1, keepdims=True)
    return ops.maximum(end - num_latents + k, -1)


def gather_rows(x, indices):
    """`x[b, indices[b, n]]` for `x` `[B, L]` or `[B, L, C]`; -1 wraps to the
    last row, as `jnp.take` does in DeepMind's model."""
    length = ops.shape(x)[1]
    indices = ops.where(indices < 0, indices + length, indices)
    if len(x.shape) == 3:
        indices = indices[:, :, None]
    return ops.take_along_axis(x, indices, axis=1)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARBackbone(LayoutMapMixin, Backbone):
    """Perceiver AR: causal latents over a long context.

    A functional keras-hub backbone: inputs `token_ids` and `padding_mask`
    (`[B, L]` each), output the latent states `[B, N, hidden_dim]`. The
    whole computation is one `PerceiverARStack` layer (`backbone.stack`),
    whose layers and helpers (`embed`, `token_logits`, ...) the backbone
    exposes as its own. `num_latents=N` is a call argument (default
    `max_latents`), passed down to the stack as a Keras call-context
    argument: `backbone(inputs, num_latents=3)`.

    Args:
        vocabulary_size, hidden_dim, num_layers, num_heads,
        max_sequence_length, max_latents: see `PerceiverARStack`.
        **options: every other `PerceiverARStack` argument (listed there).
    """

    # Sharded for ModelParallel (models/layout_map.py).
    layout_rules = dict(
        attention_blocks=r"(cross|self)_attention_\d+",
        mlp_blocks=r"(cross|self)_attention_\d+",
        channel_sharded=(
            "token_embedding/embeddings", "position_embedding/embeddings",
        ),
        input_sharded=("logits/kernel",),
    )

    def __init__(self, vocabulary_size, hidden_dim, num_layers, num_heads,
                 max_sequence_length, max_latents, dtype=None, name=None,
                 trainable=True, **options):
        stack = PerceiverARStack(
            vocabulary_size=vocabulary_size, hidden_dim=hidden_dim,
            num_layers=num_layers, num_heads=num_heads,
            max_sequence_length=max_sequence_length, max_latents=max_latents,
            dtype=dtype, name="perceiver_ar", **options,
        )
        # Assigned before the functional init, as keras-hub's backbones do.
        self.stack = stack
        self.token_embedding = stack.token_embedding

        # === Functional Model ===
        inputs = {
            "token_ids": keras.Input((None,), dtype="int32",
                                     name="token_ids"),
            "padding_mask": keras.Input((None,), dtype="int32",
                                        name="padding_mask"),
        }
        super().__init__(inputs=inputs, outputs=stack(inputs), dtype=dtype,
                         name=name, trainable=trainable)
        self._register_call_context_args("num_latents")

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus the built-in names of
        `perceiver_ar_presets.PRESETS` (see there)."""
        from perceiver_keras.models.perceiver_ar import perceiver_ar_presets

        return perceiver_ar_presets.from_preset(
            cls, preset, load_weights, kwargs,
            lambda p: super(PerceiverARBackbone, cls).from_preset(
                p, load_weights=load_weights, **kwargs),
        )

    def get_config(self):
        config = super().get_config()
        config.update(self.stack.arguments())
        return config

    @property
    def attention_layer_names(self):
        """The attention blocks in the order they run: `cross_attention_0`
        (weights `[B, cross heads, N, L]` over the whole context; with
        `latents_in_keys` the last N keys are the latents), then
        `self_attention_{i}` (`[B, heads, N, N]`), each followed by the
        extra `cross_attention_{j}` of `additional_cross_attend_after_layers`.
        """
        names, extra = ["cross_attention_0"], 1
        for i in range(self.num_layers):
            names.append(f"self_attention_{i}")
            if i in self.additional_cross_attend_after_layers:
                names.append(f"cross_attention_{extra}")
                extra += 1
        return names

    def attention_maps(self, inputs, layers=None, num_latents=None):
        """`{name: float32 NumPy [B, heads, N, keys]}` of the blocks asked
        for (see `attention_layer_names`; None: all): the softmax weights
        used, causal and padding masks applied (masked keys 0; a latent
        with no allowed key averages uniformly, as the model does).
        `num_latents` as in the call. Outputs are unchanged (see
        `perceiver_keras.models.attention_maps`)."""
        names = attention_names_from(layers, self.attention_layer_names)

        def forward(inputs, names):
            return self.stack(inputs, num_latents=num_latents,
                              attention_names=names)[1]

        return compute_attention_maps(
            self, names, validate_inputs(inputs), forward, num_latents
        )


# What the backbone reads from its stack: the configuration, the layers the
# CausalLM's cached generation and the converters use, and the helpers.
_STACK_ATTRIBUTES = (
    "position_embedding", "latent_query_layers", "learned_query",
    "latent_position_embedding",
    "cross_attention_blocks", "self_attention_blocks", "output_norm",
    "logits_dense", "logits_bias", "position_embedding_kind",
    "embed", "rotary_positions", "initial_query", "token_logits",
    "self_attention_key_mask",
)


def _stack_property(name):
    return property(lambda self: getattr(self.stack, name),
                    doc=f"The stack's `{name}`.")


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARStack(keras.layers.Layer):
    """The computation of `PerceiverARBackbone`, as one layer.

    Call arguments: `{"token_ids", "padding_mask"}` and `num_latents`
    (default `max_latents`); returns the latent states.

    Args:
        vocabulary_size: token ids are `< vocabulary_size`.
        hidden_dim: channels of embeddings and latents.
        num_layers: self-attention layers on the latents.
        num_heads: heads of the self-attention layers.
        num_cross_attention_heads: heads of the cross-attention layers
            (default `num_heads`).
        max_sequence_length: longest context (krasserm `max_seq_len`; the
            cross-attention window of cached generation).
        max_latents: most latents per call (krasserm `max_latents`,
            DeepMind `z_index_dim`); also the self-attention window of
            cached generation.
        cross_attention_widening_factor, self_attention_widening_factor:
            MLP widths as multiples of `hidden_dim`.
        activation: "squared_relu", "relu", "gelu_tanh" or "gelu_erf".
        use_qkv_bias, use_mlp_bias: biases of the q/k/v and MLP layers.
        cross_attention_output_bias, self_attention_output_bias: biases of
            the attention output projections.
        mask_rules: "deepmind" or "krasserm" (see the module docstring).
        latent_query: initial latent query from the embedding of the
            latent's own input: "identity", "linear", "mlp" (linear, then
            `latent_query_mlp_layers` x (Dense + activation)) or "learned"
            (one shared learned vector).
        latents_in_keys: krasserm's cross-attention keys (see
            `PerceiverARCrossAttentionBlock`).
        use_query_residual: residual around the first cross-attention.
        position_embedding: None, "learned" or "sinusoidal" (DeepMind's
            fixed table; not trained) absolute positions added to the token
            embeddings; `position_embedding_size` rows (default
            `max_sequence_length`).
        position_start: position of the first valid token (0 or 1).
        terminal_relative_positions: DeepMind's positions when they are not
            taken from data (see `token_positions`).
        rotary_fraction: fraction of each head's channels that rotate,
            rounded down to even (0: no rotary; default 0.5 with absolute
            positions, else 1, as krasserm).
        rotary_heads_fraction: fraction of the heads that rotate.
        rotary_max_wavelength, rotary_frequency_spacing: see
            `rotary_inverse_frequencies` ("linspace" or "arange").
        rotary_query_offset: added to the query positions (DeepMind's
            `initial_query_offsetting`).
        negative_rotary_positions: rotate by minus the positions.
        num_rotary_self_attention_layers: self-attention layers with rotary
            (the first ones; None: all). Cross-attention always rotates.
        additional_cross_attend_after_layers: indices of self-attention
            layers after which the latents cross-attend to the inputs again.
        final_norm: LayerNorm on the output latents.
        tie_embeddings: logits from the token embedding (else a Dense).
        use_logits_bias: bias on the logits.
        attention_dropout: dropout on attention probabilities.
        prefix_dropout: training only, the rate of prefix (non-latent)
            positions dropped at random, as `prefix_dropout_kind` says.
        prefix_dropout_kind: "krasserm": each row removes
            `int(prefix * prefix_dropout)` prefix positions, the rest keep
            their positions (`mask_rules="krasserm"`); "deepmind": each
            prefix key of each row is masked in the cross-attention with
            probability `prefix_dropout`, independently (shapes unchanged).
        layer_norm_epsilon: every LayerNorm's epsilon.
        kernel_initializer: of every Dense.
        attention_implementation: the cross-attention over the context:
            "plain" (`[B, heads, N, L]` scores), "chunked" (streamed over
            key chunks: memory flat in `L` but for the keys' input), or
            "auto" (chunked once one example's scores exceed 2**25).
            Attention maps, cached generation and self-attention always
            take the plain path.
        key_value_chunk_size: keys per chunk (None: about 2**22 scores).
        remat: recompute each chunk of the chunked cross-attention in the
            backward pass (training memory flat in `L` but for the keys'
            input).
        latents_per_position: DeepMind's `num_latents_per_position` K
            (`mask_rules="deepmind"` only): each latent position carries K
            latents, its initial query repeated K times plus a learned
            `[K, hidden_dim]` embedding; they see each other and the
            earlier positions' latents, and the output is their mean after
            the final norm. `max_latents` and `num_latents` count positions
            (DeepMind's `z_index_dim` is `max_latents * K`). Cached
            generation needs K = 1.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        max_sequence_length,
        max_latents,
        cross_attention_widening_factor=4,
        self_attention_widening_factor=4,
        activation="gelu_erf",
        use_qkv_bias=False,
        use_mlp_bias=False,
        cross_attention_output_bias=True,
        self_attention_output_bias=False,
        mask_rules="krasserm",
        latent_query="identity",
        latent_query_mlp_layers=2,
        latents_in_keys=True,
        use_query_residual=True,
        position_embedding="learned",
        position_embedding_size=None,
        position_start=0,
        terminal_relative_positions=False,
        num_cross_attention_heads=None,
        rotary_fraction=None,
        rotary_heads_fraction=1.0,
        rotary_max_wavelength=10000,
        rotary_frequency_spacing="arange",
        rotary_query_offset=0,
        negative_rotary_positions=False,
        num_rotary_self_attention_layers=None,
        additional_cross_attend_after_layers=(),
        final_norm=False,
        tie_embeddings=True,
        use_logits_bias=True,
        attention_dropout=0.0,
        prefix_dropout=0.0,
        prefix_dropout_kind="krasserm",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        attention_implementation="auto",
        key_value_chunk_size=None,
        remat=False,
        latents_per_position=1,
        **kwargs,
    ):
        _check_choice("mask_rules", mask_rules, MASK_RULES)
        _check_choice("latent_query", latent_query, LATENT_QUERIES)
        _check_choice("position_embedding", position_embedding,
                      POSITION_EMBEDDINGS)
        activation_fn(activation)
        check_implementation(attention_implementation, key_value_chunk_size)
        if (isinstance(latents_per_position, bool)
                or not isinstance(latents_per_position, int)
                or latents_per_position < 1
                or (latents_per_position > 1 and mask_rules != "deepmind")):
            raise ValueError(
                "`latents_per_position` must be a positive integer (above 1 "
                'only with mask_rules="deepmind"). Received: '
                f"latents_per_position={latents_per_position!r}, "
                f"mask_rules={mask_rules!r}."
            )
        if rotary_fraction is None:
            rotary_fraction = 0.5 if position_embedding else 1.0
        if not 0 <= rotary_fraction <= 1 or not 0 <= rotary_heads_fraction <= 1:
            raise ValueError(
                "`rotary_fraction` and `rotary_heads_fraction` must be in "
                f"[0, 1]. Received: {rotary_fraction}, {rotary_heads_fraction}."
            )
        if latents_in_keys and mask_rules != "krasserm":
            raise ValueError(
                '`latents_in_keys=True` needs `mask_rules="krasserm"` (the '
                "latents must be the last positions of the array)."
            )
        additional = sorted(int(i) for i in additional_cross_attend_after_layers)
        if any(not 0 <= i < num_layers for i in additional):
            raise ValueError(
                "`additional_cross_attend_after_layers` must index the "
                f"{num_layers} self-attention layers. Received: {additional}."
            )
        super().__init__(**kwargs)
        self._register_call_context_args("num_latents")

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_sequence_length = max_sequence_length
        self.max_latents = max_latents
        self.cross_attention_widening_factor = cross_attention_widening_factor
        self.self_attention_widening_factor = self_attention_widening_factor
        self.activation = activation
        self.use_qkv_bias = use_qkv_bias
        self.use_mlp_bias = use_mlp_bias
        self.cross_attention_output_bias = cross_attention_output_bias
        self.self_attention_output_bias = self_attention_output_bias
        self.mask_rules = mask_rules
        self.latent_query = latent_query
        self.latent_query_mlp_layers = latent_query_mlp_layers
        self.latents_in_keys = latents_in_keys
        self.use_query_residual = use_query_residual
        self.position_embedding_kind = position_embedding
        self.position_embedding_size = (
            position_embedding_size or max_sequence_length
        )
        self.position_start = position_start
        self.terminal_relative_positions = terminal_relative_positions
        self.num_cross_attention_heads = num_cross_attention_heads
        self.rotary_fraction = rotary_fraction
        self.rotary_heads_fraction = rotary_heads_fraction
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_frequency_spacing = rotary_frequency_spacing
        self.rotary_query_offset = rotary_query_offset
        self.negative_rotary_positions = negative_rotary_positions
        self.num_rotary_self_attention_layers = num_rotary_self_attention_layers
        self.additional_cross_attend_after_layers = additional
        self.final_norm = final_norm
        self.tie_embeddings = tie_embeddings
        self.use_logits_bias = use_logits_bias
        self.attention_dropout = attention_dropout
        if not 0 <= prefix_dropout < 1:
            raise ValueError(
                f"`prefix_dropout` must be in [0, 1). Received: "
                f"prefix_dropout={prefix_dropout}."
            )
        _check_choice("prefix_dropout_kind", prefix_dropout_kind,
                      PREFIX_DROPOUT_KINDS)
        if (prefix_dropout and prefix_dropout_kind == "krasserm"
                and mask_rules != "krasserm"):
            raise ValueError(
                '`prefix_dropout` needs `mask_rules="krasserm"` (latents '
                "at the end of every row)."
            )
        self.prefix_dropout = prefix_dropout
        self.prefix_dropout_kind = prefix_dropout_kind
        # Only with dropout: a seed generator adds a state variable.
        self.prefix_seed_generator = (
            keras.random.SeedGenerator() if prefix_dropout else None)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.attention_implementation = attention_implementation
        self.key_value_chunk_size = key_value_chunk_size
        self.remat = remat
        self.latents_per_position = latents_per_position

        # === Layers ===
        policy = self.dtype_policy
        shape_bl = (None, None, hidden_dim)
        self.token_embedding = PerceiverARTokenEmbedding(
            vocabulary_size, hidden_dim,
            use_logits_bias=tie_embeddings and use_logits_bias,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=0.02),
            dtype=policy, name="token_embedding",
        )
        self.token_embedding.build((None, None))
        self.position_embedding = None
        if position_embedding is not None:
            sinusoidal = position_embedding == "sinusoidal"
            self.position_embedding = keras.layers.Embedding(
                self.position_embedding_size, hidden_dim,
                embeddings_initializer=(
                    keras.initializers.Constant(sinusoidal_table(
                        self.position_embedding_size, hidden_dim))
                    if sinusoidal
                    else keras.initializers.RandomNormal(stddev=0.02)
                ),
                trainable=not sinusoidal,
                dtype=policy, name="position_embedding",
            )
            self.position_embedding.build((None, None))
        self.latent_query_layers = []
        self.learned_query = None
        if latent_query in ("linear", "mlp"):
            units = 1 + (latent_query_mlp_layers if latent_query == "mlp"
                         else 0)
            for i in range(units):
                dense = PerceiverDense(
                    hidden_dim, kernel_initializer=self._init(), dtype=policy,
                    name=f"latent_query_{i}" if i else "latent_query",
                )
                dense.build(shape_bl)
                self.latent_query_layers.append(dense)
        elif latent_query == "learned":
            self.learned_query = self.add_weight(
                shape=(1, hidden_dim), name="learned_query",
                initializer=keras.initializers.RandomNormal(stddev=0.02),
            )
        self.latent_position_embedding = None
        if latents_per_position > 1:  # DeepMind's z_pos_enc
            self.latent_position_embedding = self.add_weight(
                shape=(latents_per_position, hidden_dim),
                name="latent_position_embedding",
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )
        shared = dict(
            activation=activation,
            use_qkv_bias=use_qkv_bias, use_mlp_bias=use_mlp_bias,
            rotary_heads_fraction=rotary_heads_fraction,
            rotary_max_wavelength=rotary_max_wavelength,
            rotary_frequency_spacing=rotary_frequency_spacing,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(
                self.kernel_initializer),
            dtype=policy,
        )
        self.cross_attention_blocks = []
        for i in range(1 + len(additional)):
            block = PerceiverARCrossAttentionBlock(
                widening_factor=cross_attention_widening_factor,
                num_heads=num_cross_attention_heads or num_heads,
                use_output_bias=cross_attention_output_bias,
                rotary_fraction=rotary_fraction,
                use_query_residual=use_query_residual,
                latents_in_keys=latents_in_keys if i == 0 else False,
                attention_implementation=attention_implementation,
                key_value_chunk_size=key_value_chunk_size, remat=remat,
                name=f"cross_attention_{i}", **shared,
            )
            block.build(shape_bl, shape_bl)
            self.cross_attention_blocks.append(block)
        rotary_layers = (
            num_layers if num_rotary_self_attention_layers is None
            or num_rotary_self_attention_layers < 0
            else num_rotary_self_attention_layers
        )
        self.self_attention_blocks = []
        for i in range(num_layers):
            block = PerceiverARSelfAttentionBlock(
                widening_factor=self_attention_widening_factor,
                num_heads=num_heads,
                use_output_bias=self_attention_output_bias,
                rotary_fraction=rotary_fraction if i < rotary_layers else 0.0,
                name=f"self_attention_{i}", **shared,
            )
            block.build(shape_bl)
            self.self_attention_blocks.append(block)
        self.output_norm = None
        if final_norm:
            self.output_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=policy, name="output_norm"
            )
            self.output_norm.build(shape_bl)
        self.logits_dense = None
        if not tie_embeddings:
            self.logits_dense = PerceiverDense(
                vocabulary_size, use_bias=use_logits_bias,
                kernel_initializer=self._init(), dtype=policy, name="logits",
            )
            self.logits_dense.build(shape_bl)
        self.built = True

    def _init(self):
        return keras.initializers.get(
            keras.initializers.serialize(self.kernel_initializer)
        )

    # --- pieces shared by the forward pass and cached generation ----------

    def embed(self, token_ids, positions):
        """Token embedding plus the absolute position embedding, if any."""
        x = self.token_embedding(token_ids)
        if self.position_embedding is not None:
            rows = ops.clip(positions, 0, self.position_embedding_size - 1)
            x = x + self.position_embedding(rows)
        return x

    def rotary_positions(self, positions):
        positions = -positions if self.negative_rotary_positions else positions
        return positions

    def initial_query(self, latent_inputs):
        """Initial latent query from the embeddings of the latents' inputs."""
        if self.latent_query == "learned":
            return ops.zeros_like(latent_inputs) + ops.cast(
                self.learned_query, latent_inputs.dtype)
        # DeepMind's "mlp" style: the linear map, then Dense + activation
        # layers (an activation after the last one too).
        x = latent_inputs
        for i, dense in enumerate(self.latent_query_layers):
            x = dense(x)
            if i:
                x = activation_fn(self.activation)(x)
        return x

    @property
    def logits_bias(self):
        """The bias of tied logits (None without)."""
        return self.token_embedding.logits_bias

    def token_logits(self, hidden):
        """Next-token logits `[..., vocabulary_size]` of latent states."""
        if self.logits_dense is not None:
            return self.logits_dense(hidden)
        return self.token_embedding(hidden, reverse=True)

    def self_attention_key_mask(self, causal, key_valid):
        """DeepMind masks invalid latents as keys (the diagonal stays on);
        krasserm masks causally only."""
        if self.mask_rules == "krasserm":
            return causal
        size = causal.shape[-1]
        eye = ops.eye(causal.shape[-2], size, dtype="bool")[None]
        return ops.logical_or(
            ops.logical_and(causal, key_valid[:, None, :]), eye
        )

    # --- forward pass -----------------------------------------------------

    def call(self, inputs, num_latents=None, training=None,
             attention_names=()):
        """With `attention_names` (names of blocks), returns `(latents,
        {name: weights})` (see `PerceiverARBackbone.attention_maps`)."""
        validate_inputs(inputs)
        token_ids = inputs["token_ids"]
        mask = ops.cast(inputs["padding_mask"], "bool")
        num_latents = num_latents or self.max_latents
        if num_latents > self.max_latents:
            raise ValueError(
                f"`num_latents` must be at most max_latents="
                f"{self.max_latents}. Received: num_latents={num_latents}."
            )
        length = ops.shape(token_ids)[1]
        if isinstance(length, int):  # fewer positions than latents: all are
            num_latents = min(num_latents, length)
        positions = token_positions(
            mask, self.position_start, self.terminal_relative_positions
        )
        x = self.embed(token_ids, positions)
        dropout = self.prefix_dropout if training else 0.0
        if dropout and self.prefix_dropout_kind == "krasserm":
            x, positions, mask = self._drop_prefix(x, positions, mask,
                                                   num_latents)
            length = ops.shape(x)[1]
        index = latent_indices(mask, num_latents, self.mask_rules)
        latent_valid = ops.logical_and(index >= 0, gather_rows(mask, index))
        rotary = self.rotary_positions(positions)
        query_positions = gather_rows(rotary, index) + self.rotary_query_offset
        query = self.initial_query(gather_rows(x, index))
        per_position = self.latents_per_position
        if per_position > 1:  # K latents per position, consecutive
            index, latent_valid, query_positions, query = (
                ops.repeat(t, per_position, axis=1)
                for t in (index, latent_valid, query_positions, query))
            query = query + ops.tile(ops.cast(
                self.latent_position_embedding, query.dtype)[None],
                (1, num_latents, 1))

        # Latent q sees input j iff j <= index[q] and key_mask[j].
        key_mask = mask
        if dropout and self.prefix_dropout_kind == "deepmind":
            key_mask = ops.logical_and(
                key_mask, self._prefix_key_keep(index, length))
        # Latents see their own position's and earlier positions' latents.
        n = ops.arange(num_latents * per_position, dtype="int32")
        n = n // per_position
        causal = (n[None, :] <= n[:, None])[None]
        self_mask = self.self_attention_key_mask(causal, latent_valid)
        maps = {}

        def run(block, *args):
            return call_recording(block, block.name, attention_names, maps,
                                  *args, training=training)

        h = run(self.cross_attention_blocks[0], query, x, query_positions,
                rotary, key_mask, index)
        extra = iter(self.cross_attention_blocks[1:])
        for i, block in enumerate(self.self_attention_blocks):
            h = run(block, h, query_positions, self_mask)
            if i in self.additional_cross_attend_after_layers:
                h = run(next(extra), h, x, query_positions, rotary,
                        key_mask, index)
        if self.output_norm is not None:
            h = self.output_norm(h)
        if per_position > 1:  # the mean of each position's latents
            h = ops.mean(ops.reshape(
                h, (-1, num_latents, per_position, self.hidden_dim)), axis=2)
        return (h, maps) if attention_names else h

    def _drop_prefix(self, x, positions, mask, num_latents):
        """krasserm's prefix dropout: each row keeps a random, ordered
        subset of `prefix - int(prefix * prefix_dropout)` prefix positions
        (their embeddings and positions as computed before), then the
        latents. Shapes must be static (eager or compiled training)."""
        batch, length = x.shape[0], x.shape[1]
        prefix = length - num_latents
        keep = prefix - int(prefix * self.prefix_dropout)
        if prefix <= 0 or keep == prefix:
            return x, positions, mask
        scores = keras.random.uniform((batch, prefix),
                                      seed=self.prefix_seed_generator)
        kept = ops.sort(ops.top_k(scores, keep)[1], axis=-1)
        latents = ops.arange(prefix, length, dtype=kept.dtype)
        rows = ops.concatenate(
            [kept, ops.broadcast_to(latents[None], (batch, num_latents))],
            axis=1)
        return (gather_rows(x, rows), gather_rows(positions, rows),
                gather_rows(mask, rows))

    def _prefix_key_keep(self, index, length):
        """DeepMind's key-masking prefix dropout: `[B, length]`, False for
        the prefix keys dropped (each with probability `prefix_dropout`);
        the latents' own keys (from the first latent on) are kept."""
        batch = ops.shape(index)[0]
        keys = ops.arange(length, dtype=index.dtype)[None, :]
        kept = keras.random.uniform(
            (batch, length), seed=self.prefix_seed_generator
        ) >= self.prefix_dropout
        return ops.logical_or(kept, keys >= index[:, :1])

    def compute_output_shape(self, input_shape=None):
        # The number of latents is a call argument (None: unknown here);
        # Keras passes no shape for NumPy inputs.
        batch = input_shape["token_ids"][0] if input_shape else None
        return (batch, None, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(self.arguments())
        return config

    def arguments(self):
        """The constructor arguments besides the base layer's."""
        return (
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "max_sequence_length": self.max_sequence_length,
                "max_latents": self.max_latents,
                "cross_attention_widening_factor":
                    self.cross_attention_widening_factor,
                "self_attention_widening_factor":
                    self.self_attention_widening_factor,
                "activation": self.activation,
                "use_qkv_bias": self.use_qkv_bias,
                "use_mlp_bias": self.use_mlp_bias,
                "cross_attention_output_bias":
                    self.cross_attention_output_bias,
                "self_attention_output_bias": self.self_attention_output_bias,
                "mask_rules": self.mask_rules,
                "latent_query": self.latent_query,
                "latent_query_mlp_layers": self.latent_query_mlp_layers,
                "latents_in_keys": self.latents_in_keys,
                "use_query_residual": self.use_query_residual,
                "position_embedding": self.position_embedding_kind,
                "position_embedding_size": self.position_embedding_size,
                "position_start": self.position_start,
                "terminal_relative_positions":
                    self.terminal_relative_positions,
                "num_cross_attention_heads": self.num_cross_attention_heads,
                "rotary_fraction": self.rotary_fraction,
                "rotary_heads_fraction": self.rotary_heads_fraction,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_frequency_spacing": self.rotary_frequency_spacing,
                "rotary_query_offset": self.rotary_query_offset,
                "negative_rotary_positions": self.negative_rotary_positions,
                "num_rotary_self_attention_layers":
                    self.num_rotary_self_attention_layers,
                "additional_cross_attend_after_layers":
                    self.additional_cross_attend_after_layers,
                "final_norm": self.final_norm,
                "tie_embeddings": self.tie_embeddings,
                "use_logits_bias": self.use_logits_bias,
                "attention_dropout": self.attention_dropout,
                "prefix_dropout": self.prefix_dropout,
                "prefix_dropout_kind": self.prefix_dropout_kind,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "attention_implementation": self.attention_implementation,
                "key_value_chunk_size": self.key_value_chunk_size,
                "remat": self.remat,
                "latents_per_position": self.latents_per_position,
            }
        )


_STACK_ARGUMENTS = tuple(
    name for name in inspect.signature(PerceiverARStack).parameters
    if name not in ("kwargs", "position_embedding")
)
for _name in _STACK_ATTRIBUTES + _STACK_ARGUMENTS:
    assert not hasattr(Backbone, _name), _name
    setattr(PerceiverARBackbone, _name, _stack_property(_name))


def validate_inputs(inputs):
    """Checks the structure and shapes of backbone inputs at the boundary."""
    if not isinstance(inputs, dict) or set(inputs) != {
            "token_ids", "padding_mask"}:
        found = sorted(inputs) if isinstance(inputs, dict) else type(
            inputs).__name__
        raise ValueError(
            '`inputs` must be a dict with "token_ids" and "padding_mask" '
            f"([batch, length] each). Received: {found}."
        )
    ids, mask = inputs["token_ids"], inputs["padding_mask"]
    if len(ids.shape) != 2 or tuple(ids.shape) != tuple(mask.shape):
        raise ValueError(
            '`inputs["token_ids"]` and `inputs["padding_mask"]` must both be '
            f"[batch, length]. Received shapes {tuple(ids.shape)} and "
            f"{tuple(mask.shape)}."
        )
    return inputs


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}."
        )
