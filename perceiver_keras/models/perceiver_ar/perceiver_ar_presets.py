"""Built-in Perceiver AR presets: the released checkpoints' architectures.

`PerceiverARCausalLM.from_preset(NAME)` (or `PerceiverARBackbone`) resolves
a built-in name like the Perceiver IO presets do:

1. a locally converted copy in `$PERCEIVER_KERAS_HOME/NAME` (default
   `~/.cache/perceiver_keras/NAME`) is loaded like any preset directory;
2. otherwise, with `load_weights=False`, the architecture is built offline
   with random weights;
3. otherwise a `ValueError` gives the source and the
   `conversion/convert_perceiver_ar.py` command that makes the local copy.

The backbone arguments are what `perceiver_keras.conversion.perceiver_ar`
maps the released configs to (a test checks they agree). `params` is the
parameter count the reference code builds for that config.
"""

import os
from pathlib import Path

_KRASSERM_LICENSE = "Apache-2.0 (krasserm/perceiver-io)"

# What every krasserm CausalLanguageModel fixes (not in its config); the
# converter maps a config onto these too.
KRASSERM_OPTIONS = dict(
    activation="gelu_erf", use_qkv_bias=False, use_mlp_bias=False,
    cross_attention_output_bias=True, self_attention_output_bias=False,
    mask_rules="krasserm", latent_query="identity", latents_in_keys=True,
    use_query_residual=True, position_start=0, rotary_heads_fraction=1.0,
    rotary_max_wavelength=10000, rotary_frequency_spacing="arange",
    tie_embeddings=True, layer_norm_epsilon=1e-5,
)


def krasserm_backbone(max_sequence_length, attention_dropout, **sizes):
    """Backbone kwargs of a released krasserm model (rotary positions on
    the whole head in the first layer, output norm, no logits bias)."""
    return dict(
        sizes, max_sequence_length=max_sequence_length,
        cross_attention_widening_factor=4, self_attention_widening_factor=4,
        position_embedding=None, position_embedding_size=max_sequence_length,
        rotary_fraction=1.0, num_rotary_self_attention_layers=1,
        final_norm=True, use_logits_bias=False,
        attention_dropout=attention_dropout, **KRASSERM_OPTIONS,
    )

PRESETS = {
    "perceiver_ar_clm_base": {
        "description": (
            "krasserm/perceiver-ar-clm-base: Perceiver AR causal language "
            "model, 455M parameters, trained on 79B tokens of C4 with the "
            "xlnet-base-cased SentencePiece vocabulary (32,000 ids); context "
            "1024, 512 latents."
        ),
        "source": "hf://krasserm/perceiver-ar-clm-base",
        "url": "https://huggingface.co/krasserm/perceiver-ar-clm-base",
        "license": _KRASSERM_LICENSE,
        "params": None,
        "reference_config": {
            "vocab_size": 32000, "max_seq_len": 1024, "max_latents": 512,
            "num_channels": 1280, "num_heads": 10,
            "num_self_attention_layers": 20,
            "num_self_attention_rotary_layers": 1,
            "self_attention_widening_factor": 4,
            "cross_attention_widening_factor": 4,
            "cross_attention_dropout": 0.0, "post_attention_dropout": 0.0,
            "output_norm": True, "output_bias": False, "abs_pos_emb": False,
        },
        "backbone": krasserm_backbone(
            vocabulary_size=32000, hidden_dim=1280, num_layers=20,
            num_heads=10, max_sequence_length=1024, max_latents=512,
            attention_dropout=0.0,
        ),
    },
    "perceiver_ar_sam_giant_midi": {
        "description": (
            "krasserm/perceiver-ar-sam-giant-midi: Perceiver AR symbolic "
            "audio model, 134M parameters, trained on GiantMIDI-Piano (389 "
            "MIDI event ids); context 6144, 2048 latents."
        ),
        "source": "hf://krasserm/perceiver-ar-sam-giant-midi",
        "url": "https://huggingface.co/krasserm/perceiver-ar-sam-giant-midi",
        "license": _KRASSERM_LICENSE,
        "params": None,
        "reference_config": {
            "vocab_size": 389, "max_seq_len": 6144, "max_latents": 2048,
            "num_channels": 768, "num_heads": 8,
            "num_self_attention_layers": 18,
            "num_self_attention_rotary_layers": 1,
            "cross_attention_dropout": 0.1, "post_attention_dropout": 0.1,
            "residual_dropout": 0.1, "output_norm": True,
            "output_bias": False, "abs_pos_emb": False,
        },
        "backbone": krasserm_backbone(
            vocabulary_size=389, hidden_dim=768, num_layers=18,
            num_heads=8, max_sequence_length=6144, max_latents=2048,
            attention_dropout=0.1,
        ),
    },
    "perceiver_ar_random_mirrored_131072": {
        "description": (
            "DeepMind's random_mirrored_131072 (google-research/perceiver-"
            "ar): the 131,072-position copy task of the paper; 1024 "
            "latents, 6 self-attention layers, absolute sinusoidal "
            "positions from data, byte vocabulary (259 ids: pad, EOS, SOS, "
            "bytes + 3)."
        ),
        "source": "gs://perceiver-ar/checkpoints/random_mirrored_131072.zip",
        "url": "https://storage.googleapis.com/perceiver-ar/checkpoints/"
               "random_mirrored_131072.zip",
        "license": "Apache-2.0 (google-research/perceiver-ar)",
        "params": None,  # filled in below from the same arithmetic as a test
        "reference_config": {
            "num_classes": 259, "input_idx_size": [131073],
            "max_context_length": 131072, "position_encoding_type": "absolute",
            "input_embed_dim": 1024, "position_encoding": "sinusoidal",
            "learnable_position_embeddings": False, "fraction_to_rotate": 0.5,
            "fraction_heads_to_rotate": 1.0, "max_wavelength": 131072,
            "use_positions_from_data": True, "num_transformers_per_block": 6,
            "z_index_dim": 1024, "num_z_channels": 1024,
            "num_cross_attend_heads": 16,
            "cross_attention_head_group_size": 4,
            "num_transformer_heads": 16, "cross_attend_widening_factor": 4,
            "transformer_widening_factor": 4,
            "initial_query_offsetting": False,
            "initial_query_embed_style": "none", "activation_name": "sq_relu",
        },
        "backbone": {
            "vocabulary_size": 259, "hidden_dim": 1024, "num_layers": 6,
            "num_heads": 16, "num_cross_attention_heads": 16,
            "max_sequence_length": 131072, "max_latents": 1024,
            "cross_attention_widening_factor": 4,
            "self_attention_widening_factor": 4, "activation": "squared_relu",
            "use_qkv_bias": True, "use_mlp_bias": True,
            "cross_attention_output_bias": True,
            "self_attention_output_bias": True, "mask_rules": "deepmind",
            "latent_query": "linear", "latent_query_mlp_layers": 2,
            "latents_in_keys": False, "use_query_residual": True,
            "position_embedding": "sinusoidal",
            "position_embedding_size": 131073, "position_start": 1,
            "terminal_relative_positions": False, "rotary_fraction": 0.0,
            "rotary_heads_fraction": 1.0, "rotary_max_wavelength": 131072,
            "rotary_frequency_spacing": "linspace", "rotary_query_offset": 0,
            "latents_per_position": 1, "negative_rotary_positions": False,
            "num_rotary_self_attention_layers": None,
            "additional_cross_attend_after_layers": [], "final_norm": True,
            "tie_embeddings": False, "use_logits_bias": True,
            "attention_dropout": 0.0, "layer_norm_epsilon": 1e-05,
        },
    },
}


def _deepmind_param_count(c):
    """What Haiku's PerceiverAR holds for a config like the one above."""
    C, V, W = c["num_z_channels"], c["num_classes"], c[
        "cross_attend_widening_factor"]
    attention = 4 * (C * C + C)
    mlp = lambda w: C * w * C + w * C + w * C * C + C  # noqa: E731
    cross = 3 * 2 * C + attention + mlp(W)
    self_ = 2 * 2 * C + attention + mlp(c["transformer_widening_factor"])
    return (V * C + c["input_idx_size"][0] * C + (C * C + C) + cross
            + c["num_transformers_per_block"] * self_ + 2 * C + C * V + V)


def _krasserm_param_count(c):
    """What krasserm's CausalSequenceModel holds for a config (its
    `inv_freq` buffer is not a parameter; the output is tied)."""
    C, V = c["num_channels"], c["vocab_size"]
    wc = c.get("cross_attention_widening_factor", 4)
    ws = c.get("self_attention_widening_factor", 4)
    cross = 2 * 2 * C + 4 * C * C + C + 2 * C + 2 * wc * C * C
    self_ = 2 * C + 4 * C * C + 2 * C + 2 * ws * C * C
    return (V * C + (c["max_seq_len"] * C if c.get("abs_pos_emb", True)
                     else 0)
            + cross + c["num_self_attention_layers"] * self_
            + (2 * C if c.get("output_norm", False) else 0)
            + (V if c.get("output_bias", True) else 0))


for _spec in PRESETS.values():
    _count = (_deepmind_param_count if "num_classes" in _spec[
        "reference_config"] else _krasserm_param_count)
    _spec["params"] = _count(_spec["reference_config"])


def is_builtin(preset):
    return isinstance(preset, str) and preset in PRESETS


def local_preset_dir(name):
    """Where a converted copy of a built-in preset is looked for."""
    home = os.environ.get("PERCEIVER_KERAS_HOME") or os.path.join(
        "~", ".cache", "perceiver_keras")
    return Path(home).expanduser() / name


def missing_weights_message(name):
    spec = PRESETS[name]
    local = local_preset_dir(name)
    if spec["source"].startswith("hf://"):
        how = (f"python conversion/convert_perceiver_ar.py {spec['source']} "
               f"--output {local}")
    else:
        how = (f"download {spec['url']}, unzip it, then python "
               "conversion/convert_perceiver_ar.py .../checkpoint.dill "
               f"--config CONFIG_JSON --output {local}")
    return (
        f"No converted weights for the built-in preset {name!r} at {local} "
        "(set PERCEIVER_KERAS_HOME to look elsewhere). Convert them once:\n"
        f"  {how}\nOr pass load_weights=False to build the architecture "
        f"with random weights. License: {spec['license']}."
    )


def from_preset(cls, preset, load_weights, kwargs, load_preset):
    """`cls.from_preset` with the built-in names; `load_preset(path)` (keras-
    hub's own) for anything else and for a local converted copy."""
    if not is_builtin(preset):
        return load_preset(preset)
    local = local_preset_dir(preset)
    if (local / "config.json").is_file():
        return load_preset(str(local))
    if load_weights:
        raise ValueError(missing_weights_message(preset))
    from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
        PerceiverARBackbone,
    )

    backbone = PerceiverARBackbone(**{**PRESETS[preset]["backbone"], **kwargs})
    if issubclass(cls, PerceiverARBackbone):
        return backbone
    return cls(backbone=backbone)
