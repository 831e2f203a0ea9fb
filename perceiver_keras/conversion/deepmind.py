"""Converts DeepMind's Perceiver IO checkpoints (Haiku pickles) to presets.

A model kind is a module with three functions, so the registry is a table:

    build_task(deepmind_config) -> Task    (random weights)
    weight_rows(task, deepmind_config)
        -> [(checkpoint_name, variable, transform)]
    run_inputs(task, inputs) -> {output_key: array}

`deepmind_config` holds the keyword arguments given to DeepMind's modules,
under the same keys as in DeepMind's colabs (the `deepmind_config` of a
fixture's `config.json`, or of a built-in preset in `presets/`). Unknown keys
are refused, so a configuration either converts exactly or fails loudly.

This module also holds what every kind shares: reading DeepMind's
`PerceiverEncoder` arguments and naming its parameters.
"""

import importlib
import json
import os
import pickle

import keras

from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.conversion.common import (
    backbone_options as common_backbone_options,
)
from perceiver_keras.conversion.common import cross_attention_rows
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.common import inference_mode
from perceiver_keras.conversion.common import save_preset_atomically
from perceiver_keras.conversion.common import self_attention_rows
from perceiver_keras.utils.deepmind_checkpoint import load_deepmind_checkpoint

KINDS = {
    "image_learned": "perceiver_keras.conversion.deepmind_image",
    "image_fourier": "perceiver_keras.conversion.deepmind_image",
    "image_conv": "perceiver_keras.conversion.deepmind_image",
    "mlm": "perceiver_keras.conversion.deepmind_mlm",
    "optical_flow": "perceiver_keras.conversion.deepmind_flow",
    "multimodal": "perceiver_keras.conversion.deepmind_multimodal",
}

# Haiku's ExponentialMovingAverage keeps, beside the debiased `average` the
# model reads, a biased accumulator and a step counter that only training
# uses. They are the one kind of checkpoint entry no model weight stands for.
EMA_BOOKKEEPING = ("hidden", "counter")


def kind_module(kind):
    """The module that builds, maps and runs one model kind."""
    if kind not in KINDS:
        raise ValueError(
            f"`kind` must be one of {sorted(KINDS)}. Received: kind={kind!r}."
        )
    return importlib.import_module(KINDS[kind])


def run_inputs(kind, task, inputs):
    """`kind_module(kind).run_inputs(task, inputs)`, without recording
    gradients (see `common.inference_mode`)."""
    with inference_mode():
        return kind_module(kind).run_inputs(task, inputs)


def read_config(config):
    """`(kind, deepmind_config)` from a dict or a JSON file in fixture format.

    The format is that of the fixtures' `config.json` and of the built-in
    presets: `{"kind": ..., "deepmind_config": {...}}` (other keys, such as
    metadata, are ignored).
    """
    if isinstance(config, (str, os.PathLike)):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, dict) or not isinstance(
        config.get("deepmind_config"), dict
    ):
        raise ValueError(
            "`config` must be a dict (or JSON file) with keys 'kind' and "
            f"'deepmind_config' (a dict). Received: {config!r:.200}"
        )
    kind = config.get("kind")
    kind_module(kind)  # validates the kind
    return kind, config["deepmind_config"]


def checkpoint_tensors(params, state):
    """Parameters and state in one namespace, without EMA bookkeeping.

    BatchNorm statistics are read from `.../mean_ema/average` and
    `.../var_ema/average`; their `hidden` and `counter` siblings are dropped.
    """
    tensors = dict(params)
    for name, value in state.items():
        scope, _, leaf = name.rpartition("/")
        if leaf in EMA_BOOKKEEPING and f"{scope}/average" in state:
            continue
        tensors[name] = value
    return tensors


def convert_deepmind(checkpoint_path, config, output_dir):
    """Converts one checkpoint into a preset directory; returns the task.

    Args:
        checkpoint_path: DeepMind's `.pickle` / `.pystate` file. It is read
            with an allow-list unpickler: nothing in it is executed.
        config: `{"kind", "deepmind_config"}` dict or JSON file path.
        output_dir: preset directory, written all at once (an error leaves
            nothing there).

    Raises:
        ValueError: the checkpoint and the configured model disagree; the
            message lists missing, unused and mismatched tensors.
    """
    kind, deepmind_config = read_config(config)
    module = kind_module(kind)
    # Read (and vet) the file before spending time on building the model.
    params, state = load_deepmind_checkpoint(checkpoint_path)
    task = module.build_task(deepmind_config)
    rows = module.weight_rows(task, deepmind_config)
    assign_weights(task, rows, checkpoint_tensors(params, state))
    save_preset_atomically(task, output_dir)
    return task


def save_deepmind_checkpoint(task, config, path):
    """Writes `task`'s weights as a Haiku `{"params": ...}` pickle that
    `convert_deepmind(path, config, ...)` reads back (for tests and
    benchmarks of the converter on sizes no released checkpoint has).

    Only kinds whose table stores every array as is (no transform) can be
    written; others raise a ValueError.
    """
    kind, deepmind_config = read_config(config)
    params = {}
    for name, variable, transform in kind_module(kind).weight_rows(
        task, deepmind_config
    ):
        if transform is not None:
            raise ValueError(
                f"Cannot write a {kind} checkpoint: {name} is transformed "
                "when read."
            )
        scope, leaf = name.rsplit("/", 1)
        params.setdefault(scope, {})[leaf] = keras.ops.convert_to_numpy(
            variable.value
        )
    with open(path, "wb") as f:
        pickle.dump({"params": params}, f)


# --- shared by every kind: DeepMind's PerceiverEncoder ----------------------


def check_keys(options, allowed, where):
    """Refuses DeepMind arguments this converter does not reproduce."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unsupported {where} arguments {unknown}. Supported: "
            f"{sorted(allowed)}."
        )


def require(options, key, supported, where):
    """Checks an argument that only some values of are reproduced."""
    value = options.get(key, supported[0])
    if value not in supported:
        raise ValueError(
            f"`{where}.{key}` must be one of {list(supported)} to convert. "
            f"Received: {key}={value!r}."
        )
    return value


ENCODER_KEYS = (
    "num_self_attends_per_block", "num_blocks", "z_index_dim",
    "num_z_channels", "qk_channels", "v_channels", "num_cross_attend_heads",
    "num_self_attend_heads", "cross_attend_widening_factor",
    "self_attend_widening_factor", "dropout_prob", "z_pos_enc_init_scale",
    "cross_attention_shape_for_attn", "use_query_residual", "name",
)


def adapter_rows(scope, adapter):
    """Rows of an input adapter in Haiku's naming (`ImagePreprocessor` and
    the multimodal per-modality preprocessors share it)."""
    flat = lambda a: a.reshape(-1)  # BatchNorm arrays are (1, 1, 1, C)
    prep_type = getattr(adapter, "prep_type", None)
    rows = []
    if prep_type == "conv1x1":
        rows += dense_rows(f"{scope}/~/conv2_d", adapter.conv)
    elif prep_type == "conv":
        stem = f"{scope}/~/conv2_d_downsample/~"
        norm = adapter.batch_norm
        rows += dense_rows(f"{stem}/conv", adapter.conv)
        rows += [
            (f"{stem}/batchnorm/scale", norm.gamma, flat),
            (f"{stem}/batchnorm/offset", norm.beta, flat),
            (f"{stem}/batchnorm/~/mean_ema/average", norm.moving_mean, flat),
            (f"{stem}/batchnorm/~/var_ema/average", norm.moving_variance,
             flat),
        ]
    elif getattr(adapter, "patch_projection", None) is not None:
        rows += dense_rows(f"{scope}/patches_linear", adapter.patch_projection)
    # Positions are built inside `_build_network_inputs`.
    positions = f"{scope}/~_build_network_inputs"
    if adapter.position_encoding == "trainable":
        rows.append((f"{positions}/trainable_position_encoding/pos_embs",
                     adapter.positions.embeddings, None))
    if adapter.position_projection is not None:
        rows += dense_rows(f"{positions}/position_encoding_projector/linear",
                           adapter.position_projection)
    return rows


def encoder_scope(encoder_config):
    """Haiku scope of the encoder: `perceiver_encoder`, or `encoder` (video)."""
    return encoder_config.get("name", "perceiver_encoder")


# `PerceiverBackbone` argument -> (`PerceiverEncoder` argument, its default).
ENCODER_OPTIONS = {
    "num_latents": ("z_index_dim", 512),
    "latent_dim": ("num_z_channels", 1024),
    "num_blocks": ("num_blocks", 8),
    "num_self_attends_per_block": ("num_self_attends_per_block", 6),
    "num_cross_attend_heads": ("num_cross_attend_heads", 1),
    "num_self_attend_heads": ("num_self_attend_heads", 8),
    "cross_attend_widening_factor": ("cross_attend_widening_factor", 1),
    "self_attend_widening_factor": ("self_attend_widening_factor", 1),
    "qk_channels": ("qk_channels", None),
    "v_channels": ("v_channels", None),
    "use_query_residual": ("use_query_residual", True),
    "dropout": ("dropout_prob", 0.0),
    "latent_init_scale": ("z_pos_enc_init_scale", 0.02),
}


def backbone_options(encoder_config):
    """`PerceiverBackbone` arguments for DeepMind's `PerceiverEncoder(**cfg)`
    (DeepMind's defaults; its GELU is the tanh approximation)."""
    check_keys(encoder_config, ENCODER_KEYS, "encoder")
    return common_backbone_options(
        encoder_config, ENCODER_OPTIONS, "cross_attention_shape_for_attn",
        gelu_approximate=True,
    )


def encoder_rows(backbone, encoder_config):
    """Rows for the latents, the cross-attention and the self-attentions.

    Haiku names repeated modules `self_attention`, `self_attention_1`, ...
    """
    scope = f"{encoder_scope(encoder_config)}/~"
    rows = [
        (f"{scope}/trainable_position_encoding/pos_embs",
         backbone.latents.embeddings, None),
        *cross_attention_rows(f"{scope}/cross_attention",
                              backbone.cross_attends[0]),
    ]
    for i, block in enumerate(backbone.self_attends):
        suffix = f"_{i}" if i else ""
        rows += self_attention_rows(f"{scope}/self_attention{suffix}", block)
    return rows
