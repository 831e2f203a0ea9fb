"""Built-in HiP architectures: DeepMind's `VARIANTS` table.

google-deepmind/hierarchical_perceiver (`perceiver.py`, `VARIANTS`) defines
HiP-16, HiP-256, Mini and 16x3 (used with `HiP` / `HiPClassBottleneck`)
and three Perceiver IO sizes (io_mini, io_c_50m, io_c_150m, used with its
`PerceiverIO` template: a single block). DeepMind released no HiP weights,
so these presets build the architecture only: `from_preset(name,
load_weights=False)`. The modalities default to one ImageNet image as raw
pixels, `image` (224 * 224, 3); pass `modalities=` (and for a classifier
`label_modalities=`) to build the same variant for other inputs. Every
other constructor argument can be overridden the same way.
"""

# DeepMind's VARIANTS (perceiver.py at commit a1c4cd2), same values.
VARIANTS = {
    "Mini": {
        "num_groups": (16, 1, 16),
        "num_self_attends_per_block": (2, 1, 1),
        "z_index_dim": (128, 64, 128),
        "num_z_channels": (128, 1024, 128),
        "num_cross_attend_heads": (1, 1, 1),
        "num_self_attend_heads": (4, 32, 4),
        "cross_attend_widening_factor": (1, 1, 1),
        "self_attend_widening_factor": (4, 4, 4),
        "num_embedding_channels": 32,
    },
    "16": {
        "num_groups": (16, 4, 1, 1, 1, 4, 16),
        "num_self_attends_per_block": (2, 2, 18, 2, 1, 1, 1),
        "z_index_dim": (128, 256, 256, 64, 256, 256, 128),
        "num_z_channels": (128, 256, 512, 1024, 512, 256, 128),
        "num_cross_attend_heads": (1, 1, 1, 1, 1, 1, 1),
        "num_self_attend_heads": (4, 8, 16, 32, 16, 8, 4),
        "cross_attend_widening_factor": (1, 1, 1, 1, 1, 1, 1),
        "self_attend_widening_factor": (4, 4, 4, 4, 4, 4, 4),
        "num_embedding_channels": 32,
    },
    "256": {
        "num_groups": (256, 64, 16, 4, 1, 1, 1, 4, 16, 64, 256),
        "num_self_attends_per_block": (1, 1, 2, 2, 18, 2, 1, 1, 1, 1, 1),
        "z_index_dim": (32, 64, 128, 256, 256, 64, 256, 256, 128, 64, 32),
        "num_z_channels": (64, 96, 128, 256, 512, 1024, 256, 128, 64, 32, 16),
        "num_cross_attend_heads": (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        "num_self_attend_heads": (1, 2, 4, 8, 16, 32, 16, 8, 4, 2, 1),
        "cross_attend_widening_factor": (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        "self_attend_widening_factor": (4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4),
        "num_embedding_channels": 16,
    },
    "io_mini": {
        "num_self_attends_per_block": 2,
        "z_index_dim": 128,
        "num_z_channels": 128,
        "num_cross_attend_heads": 1,
        "num_self_attend_heads": 2,
        "cross_attend_widening_factor": 1,
        "self_attend_widening_factor": 2,
        "num_embedding_channels": 128,
    },
    "io_c_50m": {
        "num_self_attends_per_block": 8,
        "z_index_dim": 1024,
        "num_z_channels": 512,
        "num_cross_attend_heads": 8,
        "num_self_attend_heads": 8,
        "cross_attend_widening_factor": 4,
        "self_attend_widening_factor": 4,
        "num_embedding_channels": 512,
    },
    "io_c_150m": {
        "num_self_attends_per_block": 12,
        "z_index_dim": 1024,
        "num_z_channels": 896,
        "num_cross_attend_heads": 16,
        "num_self_attend_heads": 16,
        "cross_attend_widening_factor": 4,
        "self_attend_widening_factor": 4,
        "num_embedding_channels": 896,
    },
}

# DeepMind's 16x3 is Mini with a deeper, wider processor.
VARIANTS["16x3"] = {
    **VARIANTS["Mini"],
    "num_self_attends_per_block": (2, 18, 2),
    "z_index_dim": (128, 256, 128),
}

PRESET_VARIANTS = {
    "hip_mini": "Mini",
    "hip_16": "16",
    "hip_256": "256",
    "hip_16x3": "16x3",
    "hip_io_mini": "io_mini",
    "hip_io_c_50m": "io_c_50m",
    "hip_io_c_150m": "io_c_150m",
}
DEFAULT_MODALITIES = [["image", 224 * 224, 3]]


def is_hip_preset(preset):
    return isinstance(preset, str) and preset in PRESET_VARIANTS


def preset_config(name, **overrides):
    """Backbone kwargs of a built-in preset, with `overrides` applied."""
    if not is_hip_preset(name):
        raise ValueError(
            f"`preset` must be one of {sorted(PRESET_VARIANTS)}. "
            f"Received: {name!r}."
        )
    variant = VARIANTS[PRESET_VARIANTS[name]]
    config = {
        k: list(v) if isinstance(v, tuple) else v for k, v in variant.items()
    }
    config["modalities"] = [list(m) for m in DEFAULT_MODALITIES]
    config.update(overrides)
    return config


def check_no_weights(name, load_weights):
    if load_weights:
        raise ValueError(
            f"DeepMind released no weights for HiP ({name!r} is an "
            "architecture only). Pass load_weights=False to build it with "
            "random weights, or convert your own DeepMind parameters with "
            "`python conversion/convert_hip.py PARAMS_NPZ --config "
            "CONFIG_JSON --output PRESET_DIR` and load that directory."
        )


def small_config(modalities, num_groups, z_index_dim, num_z_channels,
                 num_embedding_channels, **overrides):
    """Backbone kwargs of a small three-block HiP (encoder, processor,
    decoder) for tests, examples and benchmarks.

    `num_groups` is the encoder's (and decoder's) group count; the
    processor has one. `z_index_dim` and `num_z_channels` are per block.
    One self-attention per block, one cross-attention head, widening 1 in
    cross- and 2 in self-attention; `overrides` replace any of these.
    """
    config = dict(
        modalities=modalities,
        num_groups=[num_groups, 1, num_groups],
        num_self_attends_per_block=[1, 1, 1],
        z_index_dim=list(z_index_dim),
        num_z_channels=list(num_z_channels),
        num_cross_attend_heads=[1, 1, 1],
        num_self_attend_heads=[2, 4, 2],
        cross_attend_widening_factor=[1, 1, 1],
        self_attend_widening_factor=[2, 2, 2],
        num_embedding_channels=num_embedding_channels,
    )
    config.update(overrides)
    return config
