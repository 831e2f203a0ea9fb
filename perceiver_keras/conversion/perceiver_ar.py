"""Perceiver AR converters: DeepMind `checkpoint.dill` and krasserm
`save_pretrained` directories, as tables.

Each source has two parts: a config mapping (reference constructor
arguments -> `PerceiverARBackbone` arguments) and a weight table (rows
`(checkpoint name, keras variable, transform)` checked both ways by
`assign_weights`).
"""

import json
import os

import numpy as np

from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm import (
    PerceiverARCausalLM,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E501
    PerceiverARCausalLMPreprocessor,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_layers import (
    rotary_inverse_frequencies,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_presets import (
    KRASSERM_OPTIONS,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_sentence_piece_tokenizer import (  # noqa: E501
    PerceiverARSentencePieceTokenizer,
)
from perceiver_keras.utils.deepmind_ar_checkpoint import (
    load_perceiver_ar_checkpoint,
)
from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir

DEEPMIND_KIND = "deepmind_perceiver_ar"
KRASSERM_KIND = "krasserm_perceiver_ar_clm"
KRASSERM_MODEL_TYPE = "perceiver-ar-causal-language-model"
# transformers' file name for an XLNet tokenizer's SentencePiece model, as
# `save_pretrained` of krasserm's clm-base tokenizer writes it.
SENTENCE_PIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"

_DEEPMIND_ACTIVATIONS = {"sq_relu": "squared_relu", "relu": "relu",
                         "gelu": "gelu_tanh"}


def _t(array):
    """torch `nn.Linear.weight` `[out, in]` -> Keras kernel `[in, out]`."""
    return np.transpose(array)


def _dense(prefix, dense, bias_name="b", kernel_name="w", transform=None):
    rows = [(f"{prefix}{kernel_name}", dense.kernel, transform)]
    if dense.use_bias:
        rows.append((f"{prefix}{bias_name}", dense.bias, None))
    return rows


def _norm(prefix, norm, scale="scale", offset="offset"):
    return [(f"{prefix}{scale}", norm.gamma, None),
            (f"{prefix}{offset}", norm.beta, None)]


# --- DeepMind (google-research/perceiver-ar) ---------------------------------


def deepmind_backbone_kwargs(kwargs):
    """`PerceiverAR(...)` constructor kwargs -> `PerceiverARBackbone` kwargs."""
    get = lambda name, default: kwargs.get(name, default)  # noqa: E731
    unsupported = {
        "include_initial_cross_attention": True,
        "mask_style": "final_block",
        "cross_attention_shape_for_attn": "kv",
        "concat_pos": True,
    }
    for name, only in unsupported.items():
        if get(name, only) != only:
            raise ValueError(
                f"DeepMind option {name}={kwargs[name]!r} is not supported "
                f"(only {only!r})."
            )
    # Heads in groups only trade compute for memory, unless a fraction of
    # each group's heads rotates.
    if get("cross_attention_head_group_size", 0) and (
            kwargs["position_encoding_type"] == "rotary"
            and get("fraction_heads_to_rotate", 1.0) != 1.0):
        raise ValueError(
            "cross_attention_head_group_size with fraction_heads_to_rotate "
            "< 1 is not supported."
        )
    channels = get("num_z_channels", 1024)
    if get("input_embed_dim", 1024) != channels:
        raise ValueError(
            "input_embed_dim must equal num_z_channels. Received: "
            f"{kwargs.get('input_embed_dim')} and {channels}."
        )
    activation = get("activation_name", "sq_relu")
    style = get("initial_query_embed_style", "none")
    if style == "mlp" and get("initial_query_embed_activation_name",
                              "sq_relu") != activation:
        raise ValueError(
            "initial_query_embed_activation_name must equal activation_name."
        )
    if style == "learned" and not get("share_learned_initial_query", False):
        raise ValueError("Only share_learned_initial_query=True is supported.")
    rotary = kwargs["position_encoding_type"] == "rotary"
    from_data = get("use_positions_from_data", False)
    offsetting = get("initial_query_offsetting", False)
    position_embedding = None
    if not rotary:
        kind = get("position_encoding", "sinusoidal")
        if kind not in ("sinusoidal", "random"):
            raise ValueError(f"position_encoding={kind!r} is not supported.")
        position_embedding = "sinusoidal" if kind == "sinusoidal" else "learned"
        if get("learnable_position_embeddings", False):
            position_embedding = "learned"
        sizes = kwargs["input_idx_size"]
        if len(sizes) != 1:
            raise ValueError("Only one-dimensional input_idx_size is supported.")
    size = kwargs["input_idx_size"][0] if not rotary else None
    if size == -1:
        size = kwargs["max_context_length"]
    per_position = get("num_latents_per_position", 1)
    if get("z_index_dim", 1024) % per_position:
        raise ValueError(
            f"z_index_dim={kwargs.get('z_index_dim')} is not a multiple of "
            f"num_latents_per_position={per_position}."
        )
    return dict(
        vocabulary_size=kwargs["num_classes"],
        hidden_dim=channels,
        num_layers=get("num_transformers_per_block", 12),
        num_heads=get("num_transformer_heads", 8),
        num_cross_attention_heads=get("num_cross_attend_heads", 1),
        max_sequence_length=kwargs["max_context_length"],
        # DeepMind counts latents, ours positions (K latents each).
        max_latents=get("z_index_dim", 1024) // per_position,
        latents_per_position=per_position,
        cross_attention_widening_factor=get("cross_attend_widening_factor", 1),
        self_attention_widening_factor=get("transformer_widening_factor", 1),
        activation=_DEEPMIND_ACTIVATIONS[activation],
        use_qkv_bias=True,
        use_mlp_bias=True,
        cross_attention_output_bias=True,
        self_attention_output_bias=True,
        mask_rules="deepmind",
        latent_query={"none": "linear", "mlp": "mlp",
                      "learned": "learned"}[style],
        latent_query_mlp_layers=get("initial_query_embed_num_layers", 2),
        latents_in_keys=False,
        use_query_residual=get("encoder_use_query_residual", True),
        position_embedding=position_embedding,
        position_embedding_size=size,
        position_start=1 if from_data else 0,
        terminal_relative_positions=not from_data,
        rotary_fraction=get("fraction_to_rotate", 0.25) if rotary else 0.0,
        rotary_heads_fraction=get("fraction_heads_to_rotate", 1.0),
        rotary_max_wavelength=get("max_wavelength", 8192) + int(offsetting),
        rotary_frequency_spacing="linspace",
        rotary_query_offset=int(offsetting),
        negative_rotary_positions=(
            get("use_negative_rotary_positions", False) and not from_data
        ),
        num_rotary_self_attention_layers=None,
        additional_cross_attend_after_layers=(
            get("additional_cross_attend_after_layers", None) or []
        ),
        final_norm=True,
        tie_embeddings=False,
        use_logits_bias=True,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
    )


def _deepmind_cross_rows(prefix, block):
    a = block.attention
    return [
        *_norm(f"{prefix}/layer_norm/", block.query_norm),
        *_norm(f"{prefix}/layer_norm_1/", block.key_value_norm),
        *_dense(f"{prefix}/attention/linear/", a.query_dense),
        *_dense(f"{prefix}/attention/linear_1/", a.key_dense),
        *_dense(f"{prefix}/attention/linear_2/", a.value_dense),
        *_dense(f"{prefix}/attention/linear_3/", a.output_dense),
        *_norm(f"{prefix}/layer_norm_2/", block.mlp.norm),
        *_dense(f"{prefix}/dense/linear/", block.mlp.hidden_dense),
        *_dense(f"{prefix}/dense/linear_1/", block.mlp.output_dense),
    ]


def _deepmind_self_rows(prefix, block):
    a = block.attention
    return [
        *_norm(f"{prefix}/layer_norm/", block.attention_norm),
        *_dense(f"{prefix}/attention/linear/", a.query_dense),
        *_dense(f"{prefix}/attention/linear_1/", a.key_dense),
        *_dense(f"{prefix}/attention/linear_2/", a.value_dense),
        *_dense(f"{prefix}/attention/linear_3/", a.output_dense),
        *_norm(f"{prefix}/layer_norm_1/", block.mlp.norm),
        *_dense(f"{prefix}/dense/linear/", block.mlp.hidden_dense),
        *_dense(f"{prefix}/dense/linear_1/", block.mlp.output_dense),
    ]


def _haiku_name(base, i):
    return base if i == 0 else f"{base}_{i}"


def deepmind_rows(backbone):
    """Haiku parameter names of `PerceiverAR` -> backbone variables."""
    p = "perceiver_ar/~/"
    rows = [(f"{p}embed/embeddings", backbone.token_embedding.embeddings,
             None)]
    if backbone.position_embedding is not None:
        rows.append((f"{p}embed_1/embeddings",
                     backbone.position_embedding.embeddings, None))
    for i, dense in enumerate(backbone.latent_query_layers):
        prefix = f"{p}linear/" if i == 0 else (
            f"{p}sequential/{_haiku_name('linear', i - 1)}/")
        rows += _dense(prefix, dense)
    if backbone.learned_query is not None:
        rows.append(("perceiver_ar/q_embed_learned", backbone.learned_query,
                     None))
    if backbone.latent_position_embedding is not None:
        rows.append((f"{p}z_pos_enc/pos_embs",
                     backbone.latent_position_embedding, None))
    for i, block in enumerate(backbone.cross_attention_blocks):
        rows += _deepmind_cross_rows(
            f"{p}{_haiku_name('cross_attention', i)}", block)
    for i, block in enumerate(backbone.self_attention_blocks):
        rows += _deepmind_self_rows(
            f"{p}{_haiku_name('self_attention', i)}", block)
    rows += _norm("perceiver_ar/layer_norm/", backbone.output_norm)
    rows += _dense(f"{p}logits/", backbone.logits_dense)
    return rows


def read_deepmind_config(path):
    with open(path) as f:
        config = json.load(f)
    if config.get("kind") != DEEPMIND_KIND or "constructor_kwargs" not in config:
        raise ValueError(
            f"{path}: expected a config with kind={DEEPMIND_KIND!r} and "
            f"'constructor_kwargs', found kind={config.get('kind')!r}."
        )
    return config


def convert_deepmind(checkpoint_path, config):
    """A `PerceiverARCausalLM` with the weights of a DeepMind checkpoint.

    Args:
        checkpoint_path: `checkpoint.dill`.
        config: the fixtures' `config.json` content (a dict with
            `constructor_kwargs`) or its path.
    """
    if not isinstance(config, dict):
        config = read_deepmind_config(config)
    params, _ = load_perceiver_ar_checkpoint(checkpoint_path)
    backbone = PerceiverARBackbone(
        **deepmind_backbone_kwargs(config["constructor_kwargs"]))
    assign_weights(backbone, deepmind_rows(backbone), params)
    return PerceiverARCausalLM(backbone=backbone)


# --- krasserm (krasserm/perceiver-io) -----------------------------------------


def krasserm_backbone_kwargs(model_config):
    """`CausalLanguageModelConfig` fields -> `PerceiverARBackbone` kwargs."""
    c = model_config
    channels, heads = c["num_channels"], c["num_heads"]
    abs_pos = c.get("abs_pos_emb", True)
    head_dim = channels // heads
    rotated = head_dim // 2 if abs_pos else head_dim
    if rotated % 2:
        raise ValueError(
            f"krasserm rotates {rotated} channels per head; only an even "
            "number is supported."
        )
    # `max_heads_parallel` is ignored: a memory knob, the numbers are equal.
    rotary_layers = c.get("num_self_attention_rotary_layers", 1)
    return dict(
        vocabulary_size=c["vocab_size"],
        hidden_dim=channels,
        num_layers=c["num_self_attention_layers"],
        num_heads=heads,
        max_sequence_length=c["max_seq_len"],
        max_latents=c["max_latents"],
        cross_attention_widening_factor=c.get(
            "cross_attention_widening_factor", 4),
        self_attention_widening_factor=c.get(
            "self_attention_widening_factor", 4),
        position_embedding="learned" if abs_pos else None,
        position_embedding_size=c["max_seq_len"],
        rotary_fraction=rotated / head_dim,
        num_rotary_self_attention_layers=(
            None if rotary_layers < 0 else rotary_layers),
        final_norm=c.get("output_norm", False),
        use_logits_bias=c.get("output_bias", True),
        attention_dropout=c.get("post_attention_dropout", 0.0),
        **KRASSERM_OPTIONS,
    )


def krasserm_rows(backbone):
    """krasserm state-dict names -> backbone variables."""
    b = "backend_model."
    rows = [(f"{b}input_adapter.txt_embedding.weight",
             backbone.token_embedding.embeddings, None)]
    if backbone.position_embedding is not None:
        rows.append((f"{b}input_adapter.pos_embedding.weight",
                     backbone.position_embedding.embeddings, None))
    (cross,) = backbone.cross_attention_blocks
    ca = f"{b}cross_attention.0.module."
    a = cross.attention
    rows += [
        *_norm(f"{ca}q_norm.", cross.query_norm, "weight", "bias"),
        *_norm(f"{ca}kv_norm.", cross.key_value_norm, "weight", "bias"),
    ]
    for name, dense in (("q", a.query_dense), ("k", a.key_dense),
                        ("v", a.value_dense), ("o", a.output_dense)):
        rows += _dense(f"{ca}attention.{name}_proj.", dense, "bias", "weight",
                       _t)
    rows += _krasserm_mlp_rows(f"{b}cross_attention.1.module.", cross.mlp)
    for i, block in enumerate(backbone.self_attention_blocks):
        sa = f"{b}self_attention.{i}.0.module."
        a = block.attention
        rows += _norm(f"{sa}norm.", block.attention_norm, "weight", "bias")
        for name, dense in (("q", a.query_dense), ("k", a.key_dense),
                            ("v", a.value_dense), ("o", a.output_dense)):
            rows += _dense(f"{sa}attention.{name}_proj.", dense, "bias",
                           "weight", _t)
        rows += _krasserm_mlp_rows(f"{b}self_attention.{i}.1.module.",
                                   block.mlp)
    if backbone.logits_bias is not None:
        rows.append((f"{b}output_adapter.bias", backbone.logits_bias, None))
    if backbone.output_norm is not None:
        rows += _norm(f"{b}out_norm.", backbone.output_norm, "weight", "bias")
    return rows


def _krasserm_mlp_rows(prefix, mlp):
    return [
        *_norm(f"{prefix}0.", mlp.norm, "weight", "bias"),
        *_dense(f"{prefix}1.", mlp.hidden_dense, "bias", "weight", _t),
        *_dense(f"{prefix}3.", mlp.output_dense, "bias", "weight", _t),
    ]


def read_krasserm_config(directory):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    if config.get("model_type") != KRASSERM_MODEL_TYPE:
        raise ValueError(
            f"{path}: expected model_type={KRASSERM_MODEL_TYPE!r}, found "
            f"{config.get('model_type')!r}."
        )
    return config


def convert_krasserm(directory):
    """A `PerceiverARCausalLM` from a krasserm `save_pretrained` directory
    (`model.safetensors` or `pytorch_model.bin`), with a SentencePiece
    preprocessor where the directory holds the tokenizer (see
    `krasserm_preprocessor`)."""
    config = read_krasserm_config(directory)
    backbone = PerceiverARBackbone(
        **krasserm_backbone_kwargs(config["model_config"]))
    state = dict(load_checkpoint_dir(directory))
    # The rotary frequencies are a persistent buffer, not a weight: check
    # them against the ones the model computes.
    name = "backend_model.input_adapter.frq_pos_encoding.inv_freq"
    if name in state:
        head_dim = backbone.hidden_dim // backbone.num_heads
        rotated = 2 * int(head_dim * backbone.rotary_fraction // 2)
        expected = rotary_inverse_frequencies(rotated, 10000, "arange")
        found = np.asarray(state.pop(name), np.float32)
        if found.shape != expected.shape or not np.allclose(
                found, expected, rtol=1e-6, atol=0):
            raise ValueError(
                f"{name} {found.tolist()} differs from the frequencies the "
                f"config implies, {expected.tolist()}."
            )
    assign_weights(backbone, krasserm_rows(backbone), state)
    return PerceiverARCausalLM(
        backbone=backbone, preprocessor=krasserm_preprocessor(
            directory, backbone))


def krasserm_preprocessor(directory, backbone):
    """A SentencePiece preprocessor if `directory` holds clm-base's
    tokenizer (`spiece.model`, or the `tokenizer.json` transformers 5
    writes instead), else None: byte and MIDI models take ids.

    krasserm trains and prompts without special tokens (its C4 data and
    transformers' text generation add none), so neither is added here.
    """
    path = os.path.join(directory, SENTENCE_PIECE_FILE)
    if os.path.isfile(path):
        with open(path, "rb") as f:  # bytes: the tokenizer opens no path
            proto = f.read()
    elif os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
        path = os.path.join(directory, TOKENIZER_JSON)
        proto = sentence_piece_proto_from_tokenizer_json(path)
    else:
        return None
    tokenizer = PerceiverARSentencePieceTokenizer(proto=proto)
    if tokenizer.vocabulary_size() > backbone.vocabulary_size:
        raise ValueError(
            f"{path} has {tokenizer.vocabulary_size()} pieces; the model's "
            f"vocabulary has {backbone.vocabulary_size} ids."
        )
    return PerceiverARCausalLMPreprocessor(
        tokenizer, sequence_length=backbone.max_sequence_length,
        num_latents=backbone.max_latents, add_start_token=False,
        add_end_token=False)


def sentence_piece_proto_from_tokenizer_json(path):
    """The SentencePiece model behind a transformers XLNet `tokenizer.json`
    (a Unigram vocabulary with scores and SentencePiece's precompiled
    normalization map), serialized. Special tokens become control pieces."""
    import base64

    from sentencepiece import sentencepiece_model_pb2 as spm_model

    with open(path) as f:
        spec = json.load(f)
    model = spec.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(
            f"{path}: expected an XLNet tokenizer (a Unigram model), found "
            f"a {model.get('type')!r} model."
        )
    charsmap = [n.get("precompiled_charsmap") for n in (
        (spec.get("normalizer") or {}).get("normalizers", []))
        if n.get("type") == "Precompiled"]
    special = {t["content"] for t in spec.get("added_tokens", [])
               if t.get("special")}
    proto = spm_model.ModelProto()
    proto.trainer_spec.model_type = spm_model.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id = model["unk_id"]
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    if charsmap:
        proto.normalizer_spec.precompiled_charsmap = base64.b64decode(
            charsmap[0])
    types = spm_model.ModelProto.SentencePiece
    for i, (piece, score) in enumerate(model["vocab"]):
        entry = proto.pieces.add(piece=piece, score=score)
        if i == model["unk_id"]:
            entry.type = types.UNKNOWN
        elif piece in special:
            entry.type = types.CONTROL
    return proto.SerializeToString()


# --- running fixture-style inputs ----------------------------------------------


def deepmind_padding_mask(tokens):
    """DeepMind's rows are right-padded; a row ends at its first 0 token."""
    tokens = np.asarray(tokens)
    is_pad = tokens == 0
    length = np.where(is_pad.any(1), is_pad.argmax(1), tokens.shape[1])
    return np.arange(tokens.shape[1])[None, :] < length[:, None]


def run_deepmind_inputs(causal_lm, inputs):
    """`inputs.npz` of a DeepMind case -> `{"logits": [B, N, V]}`."""
    import keras

    tokens = np.asarray(inputs["inputs"]).astype("int32")
    mask = deepmind_padding_mask(tokens)
    backbone = causal_lm.backbone
    idxs = np.asarray(inputs.get("input_idxs", np.zeros((0,))))
    if idxs.size and not backbone.terminal_relative_positions:
        expected = np.where(mask, np.cumsum(mask, 1) - 1
                            + backbone.position_start, 0)
        if not np.array_equal(idxs[..., 0], expected):
            raise ValueError(
                "`input_idxs` must count the tokens from "
                f"{backbone.position_start} with 0 on pads (as DeepMind's "
                "datasets make them); other positions are not supported."
            )
    num_latents = int(inputs.get("z_index_dim", backbone.max_latents))
    logits = causal_lm({"token_ids": tokens, "padding_mask": mask},
                       num_latents=num_latents)
    return {"logits": keras.ops.convert_to_numpy(logits)}


def generation_step_logits(causal_lm, sequences, padding_mask, prompt_length,
                           num_latents):
    """Logits that chose each generated token, replayed through the cache:
    `[B, T, V]` for the `T` tokens after `prompt_length`."""
    import keras

    ops = keras.ops
    _, cache = causal_lm._build_cache(
        ops.convert_to_tensor(sequences), ops.convert_to_tensor(padding_mask),
        num_latents)
    steps = []
    for index in range(prompt_length - 1, sequences.shape[1] - 1):
        token = ops.convert_to_tensor(sequences[:, index:index + 1])
        logits, _, cache = causal_lm.call_with_cache(token, cache, index)
        steps.append(ops.convert_to_numpy(logits)[:, 0])
    return np.stack(steps, axis=1)


def run_krasserm_inputs(causal_lm, inputs):
    """`inputs.npz` of a krasserm case -> `logits`, `last_hidden_state` and,
    with the `gen_*` inputs, `gen_sequences` (greedy, cached) and
    `gen_step_logits`."""
    import keras

    outputs = {}
    if "input_ids" in inputs:
        ids = np.asarray(inputs["input_ids"]).astype("int32")
        mask = np.asarray(inputs["attention_mask"]) > 0
        num_latents = int(inputs.get(
            "num_latents", ids.shape[1] - int(inputs["prefix_len"])))
        hidden = causal_lm.backbone({"token_ids": ids, "padding_mask": mask},
                                    num_latents=num_latents)
        outputs["last_hidden_state"] = keras.ops.convert_to_numpy(hidden)
        outputs["logits"] = keras.ops.convert_to_numpy(
            causal_lm.backbone.token_logits(hidden))
    if "gen_input_ids" in inputs:
        prompt = np.asarray(inputs["gen_input_ids"]).astype("int32")
        new = int(inputs["gen_max_new_tokens"])
        num_latents = int(inputs["gen_num_latents"])
        ids = np.pad(prompt, ((0, 0), (0, new)))
        mask = np.pad(np.asarray(inputs["gen_attention_mask"]) > 0,
                      ((0, 0), (0, new)))
        causal_lm.compile(sampler="greedy")
        generated = causal_lm.generate(
            {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None,
            num_latents=num_latents)
        sequences = np.asarray(generated["token_ids"])
        outputs["gen_sequences"] = sequences.astype("int64")
        outputs["gen_step_logits"] = generation_step_logits(
            causal_lm, sequences.astype("int32"), mask, prompt.shape[1],
            num_latents)
    return outputs


def convert(source, config=None):
    """`(causal_lm, kind)` from a DeepMind `checkpoint.dill` (with its
    config) or a krasserm `save_pretrained` directory / `hf://` name."""
    if os.path.isfile(source):
        if config is None:
            raise ValueError(
                "A DeepMind checkpoint.dill needs `--config CONFIG_JSON` "
                "(the fixtures' config.json format)."
            )
        return convert_deepmind(source, config), DEEPMIND_KIND
    if config is not None:
        raise ValueError(
            "`--config` is only for DeepMind checkpoints; a krasserm "
            "directory carries its config.json."
        )
    from perceiver_keras.conversion.hf import local_checkpoint
    from perceiver_keras.conversion.hf import local_source

    directory = local_checkpoint(source)
    local_source(source, (SENTENCE_PIECE_FILE, TOKENIZER_JSON))  # same snapshot
    return convert_krasserm(directory), KRASSERM_KIND


def run_inputs(causal_lm, kind, inputs):
    if kind == DEEPMIND_KIND:
        return run_deepmind_inputs(causal_lm, inputs)
    return run_krasserm_inputs(causal_lm, inputs)
