"""Perceiver AR as a keras-hub `CausalLM`: next-token logits and `generate()`.

Generation uses a key/value cache with fixed shapes (one slot per position
of the padded `max_length` sequence), so the compiled loop never retraces.
Each new token is one latent: its cross-attention attends over the cached
keys of the context and each self-attention layer over the cached keys of
the recent latents. The cache follows krasserm's policy, which is what its
`generate(use_cache=True)` computes:

- the prompt's last `num_latents` tokens start as latents, the rest is the
  prefix; every generated token becomes a latent;
- the latents grow up to `max_latents`, then the oldest latent leaves the
  self-attention window (its cross-attention key stays as it was computed);
- once the sequence exceeds `max_sequence_length`, the oldest key leaves
  the cross-attention window and the absolute position stops growing.

Prompts are left-padded (the preprocessor does this), so every row's prompt
ends at the same index.
"""

import keras
from keras import ops
# Named as a base: Keras' injection of `Functional` into a class hierarchy
# fails on this class's diamond (PerceiverTask and CausalLM share Task).
from keras.src.models.functional import Functional
from keras_hub.models import CausalLM

from perceiver_keras.models.input_validation import ValidatedInputsMixin
from perceiver_keras.models.perceiver_task import PerceiverTask

from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    token_positions,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    validate_inputs,
)
from perceiver_keras.models.perceiver_ar import perceiver_ar_presets
from perceiver_keras.models.perceiver_ar.perceiver_ar_metrics import (
    BitsPerToken,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_metrics import (
    Perplexity,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E501
    PerceiverARCausalLMPreprocessor,
)


def _any_equal(x, values, mask):
    found = ops.zeros_like(x, dtype="bool")
    for value in values:
        found = ops.logical_or(found, ops.equal(x, value))
    return ops.logical_and(found, mask)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARCausalLM(PerceiverTask, CausalLM, Functional):
    """Next-token prediction with a `PerceiverARBackbone`.

    Args:
        backbone: a `PerceiverARBackbone`.
        preprocessor: a `PerceiverARCausalLMPreprocessor` or None.
        num_latents: latents per training/forward call (default: the
            backbone's `max_latents`). The loss covers these positions only.
        generation_num_latents: latents the prompt starts with in
            `generate()` (krasserm's `num_latents`; default 1).

    `fit` / `evaluate` take raw strings (with the preprocessor), NumPy
    arrays or a `PyDataset` (see `PerceiverTask`).

    Call arguments: `{"token_ids", "padding_mask"}`; returns logits
    `[B, num_latents, vocabulary_size]` for the last `num_latents`
    positions.
    """

    def compile(self, optimizer="auto", loss="auto", *,
                weighted_metrics="auto", sampler="top_k", **kwargs):
        """keras-hub's `CausalLM.compile` (cross-entropy on logits, Adam),
        with "auto" weighted metrics: accuracy, `BitsPerToken` (bits per
        byte with the byte tokenizer) and `Perplexity`."""
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(),
                                BitsPerToken(), Perplexity()]
        CausalLM.compile(self, optimizer=optimizer, loss=loss,
                         weighted_metrics=weighted_metrics, sampler=sampler,
                         **kwargs)

    backbone_cls = PerceiverARBackbone
    preprocessor_cls = PerceiverARCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, num_latents=None,
                 generation_num_latents=1, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional Model ===
        inputs = backbone.input
        logits = backbone.token_logits(backbone(inputs))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self._register_call_context_args("num_latents")

        # === Config ===
        self.num_latents = num_latents
        self.generation_num_latents = generation_num_latents

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, plus the built-in names of
        `perceiver_ar_presets.PRESETS` (see there)."""
        return perceiver_ar_presets.from_preset(
            cls, preset, load_weights, kwargs,
            lambda p: super(PerceiverARCausalLM, cls).from_preset(
                p, load_weights=load_weights, **kwargs),
        )

    def validate_inputs(self, inputs):
        return validate_inputs(inputs)

    def call(self, inputs, num_latents=None, training=None, mask=None):
        # The functional graph, with this call's number of latents (passed
        # down to the backbone's stack as a call-context argument).
        inputs = self.validate_inputs(inputs)
        return super(ValidatedInputsMixin, self).call(
            inputs, training=training, mask=mask,
            num_latents=num_latents or self.num_latents,
        )

    # --- cached generation ------------------------------------------------

    def _generation_positions(self, padding_mask):
        """Positions and key validity of every slot of a generation buffer.

        The prompt is left-padded and ends at `prompt_end`; every slot after
        it will hold a generated token, so it counts as valid.
        """
        length = ops.shape(padding_mask)[1]
        steps = ops.arange(1, length + 1, dtype="int32")[None, :]
        prompt_end = ops.max(ops.where(padding_mask, steps, 0))
        valid = ops.logical_or(padding_mask, steps > prompt_end)
        b = self.backbone
        if b.terminal_relative_positions:
            raise ValueError(
                "Cached generation needs positions that do not change as "
                "the sequence grows; this model uses terminal-relative "
                "positions (DeepMind's use_positions_from_data=False)."
            )
        positions = token_positions(valid, b.position_start)
        return positions, valid, prompt_end

    def _self_window(self, index, cache):
        """Self-attention keys visible from latent slot(s) `index` `[Q]`."""
        b = self.backbone
        slots = ops.arange(ops.shape(cache["key_valid"])[1], dtype="int32")
        slots = slots[None, None, :]
        index = index[None, :, None]
        start = ops.maximum(cache["prefix_end"][:, None, None],
                            index - b.max_latents + 1)
        window = ops.logical_and(slots <= index, slots >= start)
        if b.mask_rules == "deepmind":
            valid = ops.cast(cache["key_valid"], "bool")[:, None, :]
            window = ops.logical_and(
                window, ops.logical_or(valid, slots == index))
        return window

    def _cross_window(self, index, cache):
        b = self.backbone
        slots = ops.arange(ops.shape(cache["key_valid"])[1], dtype="int32")
        slots = slots[None, None, :]
        index = index[None, :, None]
        window = ops.logical_and(
            slots <= index, slots > index - b.max_sequence_length)
        valid = ops.cast(cache["key_valid"], "bool")[:, None, :]
        return ops.logical_and(window, valid)

    def _latent_step(self, x, query_positions, index, cache, training=None):
        """Runs latents `x` `[B, Q, C]` at slots `index` (`[Q]` int) through
        the stack, writing their self-attention keys into the cache.

        The cross-attention keys of these slots must already be cached.
        """
        b = self.backbone
        start = index[0]
        cross_mask = self._cross_window(index, cache)
        self_mask = self._self_window(index, cache)
        query = b.initial_query(x)
        blocks = b.cross_attention_blocks
        h = self._cross(blocks[0], 0, query, query_positions, cross_mask,
                        cache)
        extra = 1
        self_keys, self_values = cache["self_key"], cache["self_value"]
        for i, block in enumerate(b.self_attention_blocks):
            normed = block.attention_norm(h)
            k, v = block.attention.keys_values(normed, query_positions)
            self_keys = ops.slice_update(
                self_keys, (0, i, start, 0, 0), k[:, None])
            self_values = ops.slice_update(
                self_values, (0, i, start, 0, 0), v[:, None])
            q = block.attention.queries(normed, query_positions)
            h = h + block.attention.attend(
                q, self_keys[:, i], self_values[:, i], self_mask)
            h = block.mlp(h)
            if i in b.additional_cross_attend_after_layers:
                h = self._cross(blocks[extra], extra, h, query_positions,
                                cross_mask, cache)
                extra += 1
        if b.output_norm is not None:
            h = b.output_norm(h)
        cache = dict(cache, self_key=self_keys, self_value=self_values)
        return h, cache

    def _cross(self, block, i, query, query_positions, mask, cache):
        normed = block.query_norm(query)
        q = block.attention.queries(normed, query_positions)
        attended = block.attention.attend(
            q, cache["cross_key"][:, i], cache["cross_value"][:, i], mask)
        return block.finish(query, attended)

    def _cross_keys(self, x, positions, is_latent):
        """Cross-attention keys/values of embedded slots `x` `[B, T, C]`,
        `[B, n_cross, T, H, D]` each. `is_latent` `[B, T]`: krasserm keys
        latents through the query LayerNorm of their own initial query."""
        b = self.backbone
        rotary = b.rotary_positions(positions)
        keys, values = [], []
        for i, block in enumerate(b.cross_attention_blocks):
            source = block.key_value_norm(x)
            if block.latents_in_keys:
                own = block.query_norm(b.initial_query(x))
                source = ops.where(is_latent[:, :, None], own, source)
            k, v = block.attention.keys_values(source, rotary)
            keys.append(k)
            values.append(v)
        return ops.stack(keys, axis=1), ops.stack(values, axis=1)

    def _build_cache(self, token_ids, padding_mask, num_latents):
        """Caches the prompt: cross-attention keys of every prompt slot, then
        the prompt's last `num_latents` tokens through the stack."""
        b = self.backbone
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        positions, valid, prompt_end = self._generation_positions(
            padding_mask)
        prefix_end = ops.cast(prompt_end - num_latents, "int32")
        x = b.embed(token_ids, positions)
        slots = ops.arange(length, dtype="int32")[None, :]
        is_latent = ops.broadcast_to(slots >= prefix_end, (batch, length))
        cross_key, cross_value = self._cross_keys(x, positions, is_latent)
        head_dim = b.hidden_dim // b.num_heads
        shape = (batch, b.num_layers, length, b.num_heads, head_dim)
        cache = {
            "cross_key": cross_key,
            "cross_value": cross_value,
            "self_key": ops.zeros(shape, dtype=cross_key.dtype),
            "self_value": ops.zeros(shape, dtype=cross_key.dtype),
            "positions": positions,
            "key_valid": ops.cast(valid, "int32"),
            "prefix_end": ops.full((batch,), prefix_end, dtype="int32"),
        }
        index = prefix_end + ops.arange(num_latents, dtype="int32")
        latents = ops.slice(x, (0, prefix_end, 0),
                            (batch, num_latents, b.hidden_dim))
        latent_positions = ops.slice(
            positions, (0, prefix_end), (batch, num_latents))
        query_positions = (b.rotary_positions(latent_positions)
                           + b.rotary_query_offset)
        hidden, cache = self._latent_step(latents, query_positions, index,
                                          cache)
        hidden_states = ops.slice_update(
            ops.zeros((batch, length, b.hidden_dim), hidden.dtype),
            (0, prefix_end, 0), hidden)
        return hidden_states, cache

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """One new token per row at slot `cache_update_index`.

        Args:
            token_ids: `[B, 1]`.
            cache: the dict `_build_cache` makes.
            cache_update_index: int scalar, the slot of `token_ids`.

        Returns:
            `(logits [B, 1, V], hidden_states [B, 1, C], cache)`.
        """
        b = self.backbone
        batch = ops.shape(token_ids)[0]
        index = ops.reshape(ops.cast(cache_update_index, "int32"), (1,))
        positions = ops.slice(cache["positions"], (0, index[0]), (batch, 1))
        x = b.embed(token_ids, positions)
        is_latent = ops.ones((batch, 1), dtype="bool")
        k, v = self._cross_keys(x, positions, is_latent)
        cache = dict(
            cache,
            cross_key=ops.slice_update(cache["cross_key"],
                                       (0, 0, index[0], 0, 0), k),
            cross_value=ops.slice_update(cache["cross_value"],
                                         (0, 0, index[0], 0, 0), v),
        )
        query_positions = b.rotary_positions(positions) + b.rotary_query_offset
        hidden, cache = self._latent_step(x, query_positions, index, cache)
        return b.token_logits(hidden), hidden, cache

    def _check_generation(self, num_latents):
        b = self.backbone
        if b.latents_per_position != 1:
            raise ValueError(
                "Cached generation needs one latent per position; this "
                f"backbone has latents_per_position={b.latents_per_position}."
            )
        if not 0 < num_latents <= b.max_latents:
            raise ValueError(
                f"`num_latents` must be in [1, max_latents={b.max_latents}]. "
                f"Received: num_latents={num_latents}."
            )

    def generate_step(self, inputs, stop_token_ids=None):
        """Compilable generation of one batch (see the module docstring)."""
        token_ids = ops.convert_to_tensor(inputs["token_ids"])
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        num_latents = self.generation_num_latents
        self._check_generation(num_latents)
        hidden_states, cache = self._build_cache(
            token_ids, padding_mask, num_latents)
        steps = ops.arange(1, ops.shape(token_ids)[1] + 1, dtype="int32")
        prompt_end = ops.max(ops.where(padding_mask, steps[None, :], 0))

        def next(prompt, cache, index):
            batch = ops.shape(prompt)[0]
            token = ops.slice(prompt, (0, index - 1), (batch, 1))
            logits, hidden, cache = self.call_with_cache(token, cache,
                                                         index - 1)
            return ops.squeeze(logits, 1), ops.squeeze(hidden, 1), cache

        # Left padding: the sampler must not overwrite the pads before the
        # prompt, so they count as "prompt" for it.
        sampler_mask = ops.logical_or(padding_mask,
                                      (steps <= prompt_end)[None, :])
        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=prompt_end,
            mask=sampler_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
        )
        generated = (steps > prompt_end)[None, :]
        if stop_token_ids is not None:
            ends = ops.cast(_any_equal(token_ids, stop_token_ids, generated),
                            "int32")
            after_end = ops.cumsum(ends, axis=-1) - ends
            generated = ops.logical_and(generated, after_end == 0)
        return {
            "token_ids": token_ids,
            "padding_mask": ops.logical_or(padding_mask, generated),
        }

    def generate(self, inputs, max_length=None, stop_token_ids="auto",
                 strip_prompt=False, num_latents=None):
        """keras-hub's `generate`, plus `num_latents`: latents the prompt
        starts with (default `generation_num_latents`)."""
        if num_latents is not None and num_latents != (
                self.generation_num_latents):
            self._check_generation(num_latents)
            self.generation_num_latents = num_latents
            self.generate_function = None
        self._check_generation(self.generation_num_latents)
        if self.preprocessor is None and stop_token_ids == "auto":
            stop_token_ids = None
        return super().generate(inputs, max_length=max_length,
                                stop_token_ids=stop_token_ids,
                                strip_prompt=strip_prompt)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_latents": self.num_latents,
                "generation_num_latents": self.generation_num_latents,
            }
        )
        return config
