"""Perceiver Resampler weights from IDEFICS, Idefics2 and OpenFlamingo.

Sources:
- a transformers `save_pretrained` directory (or `hf://owner/name`) of an
  IDEFICS (`model_type` "idefics"), Idefics2 ("idefics2") or standalone
  `Idefics2PerceiverResampler` ("idefics2_perceiver") model. Only the
  tensors under `...perceiver_resampler.` are read (sharded checkpoints:
  only the shards that hold them; hub repos: only those shards are
  downloaded), whatever the class saved (`IdeficsModel`,
  `IdeficsForVisionText2Text`, `Idefics2Model`, ...).
- OpenFlamingo's `checkpoint.pt` (a `torch.save` of the Flamingo state
  dict, read by the allow-list unpickler; only `perceiver.` tensors used;
  sizes come from the tensor shapes, the head count is an argument,
  default 8 as OpenFlamingo builds it).

Each source has one table: checkpoint name (after the resampler's prefix)
-> Keras variable, transform. `nn.Linear` weights are `[out, in]`, so they
are transposed; OpenFlamingo's fused `to_kv` is split into key (first
half of the outputs) and value. The model a conversion builds is a
`PerceiverResamplerEncoder` whose weights are exactly the resampler's, so
`assign_weights` checks the table both ways.
"""

import json
import os

import numpy as np

from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.conversion.common import save_preset_atomically
from perceiver_keras.layers.resampler import RESAMPLER_VARIANTS
from perceiver_keras.models.resampler.resampler_backbone import (
    PerceiverResamplerBackbone,
)
from perceiver_keras.models.resampler.resampler_encoder import (
    PerceiverResamplerEncoder,
)
from perceiver_keras.utils.hf_checkpoint import WEIGHT_FILES
from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir
from perceiver_keras.utils.hf_checkpoint import read_torch_bin

CONFIG_FILE = "config.json"
MARKER = "perceiver_resampler."
OPENFLAMINGO_PREFIX = "perceiver."
MODEL_TYPES = ("idefics", "idefics2", "idefics2_perceiver")
# transformers' `hidden_act` -> Keras activation name.
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu"}


def transpose(array):
    return np.transpose(array)


# --- configs -----------------------------------------------------------------


def read_config(directory):
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}.")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") not in MODEL_TYPES:
        raise ValueError(
            f"{path}: `model_type` must be one of {list(MODEL_TYPES)} (a "
            "model with a Perceiver Resampler). Received: "
            f"{config.get('model_type')!r}."
        )
    if config["model_type"] == "idefics" and not config.get(
        "use_resampler", False
    ):
        raise ValueError(
            f"{path}: this IDEFICS model has `use_resampler=false`; it has "
            "no Perceiver Resampler to convert."
        )
    return config


def _activation(hidden_act):
    if hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"`hidden_act` must be one of {sorted(ACTIVATIONS)}. Received: "
            f"{hidden_act!r}."
        )
    return ACTIVATIONS[hidden_act]


def idefics2_perceiver_config(config):
    """The perceiver config as `Idefics2Config` resolves it: when its
    `hidden_size` differs from the text model's, transformers replaces it
    (and `rms_norm_eps`) by the text model's."""
    if config["model_type"] == "idefics2_perceiver":
        return {"hidden_size": 4096, "rms_norm_eps": 1e-6, **config}
    perceiver = {
        "hidden_size": 4096, "rms_norm_eps": 1e-6,
        **(config.get("perceiver_config") or {}),
    }
    text = {
        "hidden_size": 4096, "rms_norm_eps": 1e-5,
        **(config.get("text_config") or {}),
    }
    if text["hidden_size"] != perceiver["hidden_size"]:
        perceiver["hidden_size"] = text["hidden_size"]
        perceiver["rms_norm_eps"] = text["rms_norm_eps"]
    return perceiver


def backbone_config(config):
    """`PerceiverResamplerBackbone` arguments for a transformers config."""
    if config["model_type"] == "idefics":
        perceiver = config.get("perceiver_config") or {}
        width = (config.get("vision_config") or {}).get("embed_dim", 768)
        return {
            **RESAMPLER_VARIANTS["idefics"],
            "feature_dim": width,
            "num_latents": perceiver.get("resampler_n_latents", 64),
            "num_layers": perceiver.get("resampler_depth", 6),
            "num_heads": perceiver.get("resampler_n_heads", 16),
            "head_dim": perceiver.get("resampler_head_dim", 96),
            "qk_norm": perceiver.get("qk_layer_norms_perceiver", False),
            "intermediate_dim": 4 * width,
        }
    perceiver = idefics2_perceiver_config(config)
    width = perceiver["hidden_size"]
    return {
        **RESAMPLER_VARIANTS["idefics2"],
        "feature_dim": width,
        "num_latents": perceiver.get("resampler_n_latents", 64),
        "num_layers": perceiver.get("resampler_depth", 3),
        "num_heads": perceiver.get("resampler_n_heads", 16),
        "head_dim": perceiver.get("resampler_head_dim", 96),
        "num_key_value_heads": perceiver.get("num_key_value_heads", 4),
        "norm_epsilon": perceiver["rms_norm_eps"],
        "mlp_activation": _activation(perceiver.get("hidden_act", "silu")),
        "intermediate_dim": 4 * width,
    }


# --- tables ------------------------------------------------------------------


def _norm_rows(name, norm):
    if hasattr(norm, "gamma"):  # LayerNorm
        return [(f"{name}.weight", norm.gamma, None),
                (f"{name}.bias", norm.beta, None)]
    return [(f"{name}.weight", norm.scale, None)]


def _linear(name, dense):
    return (f"{name}.weight", dense.kernel, transpose)


def _attention_rows(prefix, names, attention):
    """The query, key, value and output projections of a
    `ResamplerAttention`, as `prefix` + `names` (in that order)."""
    denses = (attention.query_dense, attention.key_dense,
              attention.value_dense, attention.output_dense)
    return [_linear(prefix + name, dense) for name, dense in zip(names, denses)]


def idefics_rows(resampler):
    """transformers' `IdeficsPerceiverResampler` names -> weights."""
    rows = [("latents", resampler.latents, None)]
    for i, block in enumerate(resampler.blocks):
        attention, mlp = block.attention, block.mlp
        a, f = f"blocks.{i}.0", f"blocks.{i}.1"
        rows += [
            *_norm_rows(f"{a}.context_layer_norm", block.features_norm),
            *_norm_rows(f"{a}.latents_layer_norm", block.latents_norm),
            *_attention_rows(f"{a}.", ("q_proj", "k_proj", "v_proj",
                                       "output_proj"), attention),
            *_norm_rows(f"{f}.ln", block.mlp_norm),
            _linear(f"{f}.fc", mlp.hidden_dense),
            _linear(f"{f}.c_proj", mlp.output_dense),
        ]
        if attention.qk_norm:
            rows += [
                *_norm_rows(f"{a}.q_layer_norm", attention.query_norm),
                *_norm_rows(f"{a}.k_layer_norm", attention.key_norm),
            ]
    return rows + _norm_rows("layer_norm", resampler.output_norm)


def idefics2_rows(resampler):
    """transformers' `Idefics2PerceiverResampler` names -> weights."""
    rows = [("latents", resampler.latents, None)]
    for i, block in enumerate(resampler.blocks):
        attention, mlp = block.attention, block.mlp
        p = f"layers.{i}"
        rows += [
            *_norm_rows(f"{p}.input_latents_norm", block.latents_norm),
            *_norm_rows(f"{p}.input_context_norm", block.features_norm),
            *_attention_rows(f"{p}.self_attn.", ("q_proj", "k_proj",
                                                 "v_proj", "o_proj"),
                             attention),
            *_norm_rows(f"{p}.post_attention_layernorm", block.mlp_norm),
            _linear(f"{p}.mlp.gate_proj", mlp.gate_dense),
            _linear(f"{p}.mlp.up_proj", mlp.hidden_dense),
            _linear(f"{p}.mlp.down_proj", mlp.output_dense),
        ]
    return rows + _norm_rows("norm", resampler.output_norm)


def _split_kv(part):
    """OpenFlamingo's fused `to_kv` ([2 * inner, in]): `chunk(2, dim=-1)`
    of its output, so keys are the first `inner` rows."""

    def transform(array):
        half = array.shape[0] // 2
        return np.transpose(array[:half] if part == 0 else array[half:])

    return transform


def openflamingo_rows(resampler):
    """OpenFlamingo's `PerceiverResampler` names -> weights."""
    rows = [("latents", resampler.latents, None)]
    if resampler.frame_embeddings is not None:
        rows.append(("frame_embs", resampler.frame_embeddings, None))
    if resampler.media_time_embeddings is not None:  # [T, 1, D] -> [T, D]
        rows.append(("media_time_embs", resampler.media_time_embeddings,
                     lambda a: a.reshape(a.shape[0], a.shape[-1])))
    for i, block in enumerate(resampler.blocks):
        attention, mlp = block.attention, block.mlp
        a, f = f"layers.{i}.0", f"layers.{i}.1"
        rows += [
            *_norm_rows(f"{a}.norm_media", block.features_norm),
            *_norm_rows(f"{a}.norm_latents", block.latents_norm),
            _linear(f"{a}.to_q", attention.query_dense),
            (f"{a}.to_kv.weight", attention.key_dense.kernel, _split_kv(0)),
            (f"{a}.to_kv.weight", attention.value_dense.kernel, _split_kv(1)),
            _linear(f"{a}.to_out", attention.output_dense),
            *_norm_rows(f"{f}.0", block.mlp_norm),  # nn.Sequential(LN,
            _linear(f"{f}.1", mlp.hidden_dense),  # Linear, GELU,
            _linear(f"{f}.3", mlp.output_dense),  # Linear)
        ]
    return rows + _norm_rows("norm", resampler.output_norm)


ROWS = {
    "idefics": idefics_rows,
    "idefics2": idefics2_rows,
    "idefics2_perceiver": idefics2_rows,
    "openflamingo": openflamingo_rows,
}


# --- reading -----------------------------------------------------------------


def _is_resampler_tensor(config):
    if config["model_type"] == "idefics2_perceiver":
        return lambda name: True
    return lambda name: MARKER in name


def strip_prefix(tensors, config, where, marker=MARKER):
    """`{name after the resampler's prefix: array}`; one prefix only."""
    if config["model_type"] == "idefics2_perceiver":
        return dict(tensors)
    prefixes = {name[: name.index(marker) + len(marker)] for name in tensors}
    if len(prefixes) != 1:
        raise ValueError(
            f"{where}: expected the tensors of one `{marker}` module, found "
            f"{len(prefixes)} prefixes: {sorted(prefixes)[:4]}."
        )
    (prefix,) = prefixes
    return {name[len(prefix):]: value for name, value in tensors.items()}


def read_resampler_tensors(directory, config):
    """The resampler's tensors of a `save_pretrained` directory."""
    tensors = load_checkpoint_dir(directory, _is_resampler_tensor(config))
    if not tensors:
        raise ValueError(
            f"{directory}: the checkpoint holds no `{MARKER}` tensors."
        )
    return strip_prefix(tensors, config, directory)


def local_directory(source):
    """A directory with `source`'s config and resampler weights. For an
    `hf://` repo only the config, the index and the shards holding the
    resampler are downloaded."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return source
    from perceiver_keras.conversion.hf import local_source

    directory = local_source(source, (CONFIG_FILE, "*.index.json"))
    config = read_config(directory)
    select = _is_resampler_tensor(config)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(directory, index)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map") or {}
            shards = sorted({s for n, s in weight_map.items() if select(n)})
            return local_source(source, (CONFIG_FILE, index, *shards))
    for name in WEIGHT_FILES[::2]:  # model.safetensors, pytorch_model.bin
        directory = local_source(source, (CONFIG_FILE, name))
        if os.path.isfile(os.path.join(directory, name)):
            return directory
    return directory


# --- conversion --------------------------------------------------------------


def build_encoder(backbone_kwargs):
    return PerceiverResamplerEncoder(
        PerceiverResamplerBackbone(**backbone_kwargs)
    )


def load_resampler(source):
    """A `PerceiverResamplerEncoder` holding `source`'s resampler weights.

    `source`: a `save_pretrained` directory or `hf://` repo of IDEFICS or
    Idefics2 (see the module docstring).
    """
    directory = local_directory(source)
    config = read_config(directory)
    tensors = read_resampler_tensors(directory, config)
    kwargs = backbone_config(config)
    if "latents" in tensors:  # the width the checkpoint really has
        kwargs["feature_dim"] = int(np.shape(tensors["latents"])[-1])
    task = build_encoder(kwargs)
    assign_weights(task, ROWS[config["model_type"]](task.backbone.resampler),
                   tensors)
    task.source_config = config
    return task


def openflamingo_tensors(path):
    """The `perceiver.` tensors of an OpenFlamingo `checkpoint.pt`, names
    after that prefix (also under a wrapper prefix such as `module.`)."""

    def resampler_name(name):
        head, found, _ = name.partition(OPENFLAMINGO_PREFIX)
        return found and (head == "" or head.endswith("."))

    tensors = read_torch_bin(path, resampler_name)
    if not tensors:
        raise ValueError(
            f"{path}: no `{OPENFLAMINGO_PREFIX}` tensors; not an "
            "OpenFlamingo checkpoint."
        )
    return strip_prefix(tensors, {"model_type": "openflamingo"}, path,
                        OPENFLAMINGO_PREFIX)


def openflamingo_backbone_config(tensors, num_heads):
    """The resampler's sizes from its tensors (the checkpoint has no
    config); the head count is not in the shapes (OpenFlamingo: 8)."""
    width = tensors["latents"].shape[-1]
    inner = tensors["layers.0.0.to_q.weight"].shape[0]
    if inner % num_heads:
        raise ValueError(
            f"`num_heads` must divide the attention width {inner}. "
            f"Received: num_heads={num_heads}."
        )
    depth = len({name.split(".")[1] for name in tensors
                 if name.startswith("layers.")})
    config = {
        **RESAMPLER_VARIANTS["flamingo"],
        "feature_dim": width,
        "num_latents": tensors["latents"].shape[0],
        "num_layers": depth,
        "num_heads": num_heads,
        "head_dim": inner // num_heads,
        "intermediate_dim": tensors["layers.0.1.1.weight"].shape[0],
    }
    if "frame_embs" in tensors:
        config["max_num_frames"] = tensors["frame_embs"].shape[0]
    if "media_time_embs" in tensors:
        config["max_num_media"] = tensors["media_time_embs"].shape[0]
    return config


def load_openflamingo(path, num_heads=8):
    """A `PerceiverResamplerEncoder` with OpenFlamingo's resampler.

    `path`: OpenFlamingo's `checkpoint.pt` (or any `torch.save` of a state
    dict with its names), read without executing anything.
    """
    tensors = openflamingo_tensors(path)
    task = build_encoder(openflamingo_backbone_config(tensors, num_heads))
    assign_weights(task, openflamingo_rows(task.backbone.resampler), tensors)
    task.source_config = {"model_type": "openflamingo"}
    return task


def convert_resampler(source, preset_dir):
    """Converts `source` into a preset directory, all or nothing. A file
    (not a directory or hub name) is read as an OpenFlamingo checkpoint."""
    if os.path.isfile(source):
        task = load_openflamingo(source)
    else:
        task = load_resampler(source)
    save_preset_atomically(task, preset_dir)
    return task


def run_resampler(task, features, attention_mask=None):
    """`{"latents": [B, N, C]}` for `features` `[B, M, C]` and the optional
    `attention_mask` `[B, M]` (1 = real feature)."""
    features = np.asarray(features, dtype="float32")
    inputs = {"inputs": features}
    if attention_mask is not None:
        inputs["padding_mask"] = np.asarray(attention_mask).astype(bool)
    latents = task.predict_on_batch(inputs)
    return {"latents": np.asarray(latents)}
