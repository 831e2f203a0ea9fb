"""Built-in resampler architectures (randomly initialised).

The published resamplers live inside multi-billion-parameter models whose
checkpoints are not Keras presets; a built-in name builds the resampler's
architecture offline (`from_preset(NAME, load_weights=False)`), and
`conversion/convert_resampler.py` turns a checkpoint into a preset
directory with its weights.

Sizes: IDEFICS reads CLIP ViT-H/14 features (1280 channels) with
transformers' default `IdeficsPerceiverConfig` (6 blocks, 16 heads of 96,
64 latents); Idefics2 is transformers' default `Idefics2PerceiverConfig`
(idefics2-8b: 4096 channels after the modality projection, 3 blocks, 16
query heads of 96, 4 key/value heads, 64 latents); OpenFlamingo's
`PerceiverResampler(dim=1024)` defaults (ViT-L/14, 6 blocks, 8 heads of 64,
64 latents, no media/frame embeddings).
"""

from perceiver_keras.layers.resampler import RESAMPLER_VARIANTS


def _preset(variant, description, source, **config):
    return {
        "description": description,
        "source": source,
        "backbone": {**RESAMPLER_VARIANTS[variant], **config},
    }


RESAMPLER_PRESETS = {
    "idefics_9b_resampler": _preset(
        "idefics",
        "IDEFICS-9B/80B's Perceiver Resampler over CLIP ViT-H/14 features.",
        "hf://HuggingFaceM4/idefics-9b",
        feature_dim=1280, num_latents=64, num_layers=6, num_heads=16,
        head_dim=96, intermediate_dim=4 * 1280,
    ),
    "idefics2_8b_resampler": _preset(
        "idefics2",
        "Idefics2-8B's Perceiver Resampler (grouped-query, RMSNorm).",
        "hf://HuggingFaceM4/idefics2-8b",
        feature_dim=4096, num_latents=64, num_layers=3, num_heads=16,
        head_dim=96, num_key_value_heads=4, intermediate_dim=4 * 4096,
    ),
    "openflamingo_resampler": _preset(
        "flamingo",
        "OpenFlamingo's Perceiver Resampler over CLIP ViT-L/14 features.",
        "openflamingo/OpenFlamingo-9B-vitl-mpt7b (checkpoint.pt)",
        feature_dim=1024, num_latents=64, num_layers=6, num_heads=8,
        head_dim=64, intermediate_dim=4 * 1024,
    ),
}


def builtin_backbone_config(name, load_weights):
    """The backbone config of a built-in name, None for other presets."""
    if not isinstance(name, str) or name not in RESAMPLER_PRESETS:
        return None
    if load_weights:
        source = RESAMPLER_PRESETS[name]["source"]
        raise ValueError(
            f"The built-in preset {name!r} has no weights here: convert the "
            f"checkpoint ({source}) with `python conversion/"
            "convert_resampler.py SOURCE --output PRESET_DIR` and load "
            "PRESET_DIR, or pass load_weights=False for random weights."
        )
    return dict(RESAMPLER_PRESETS[name]["backbone"])
