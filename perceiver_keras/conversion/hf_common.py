"""What the transformers Perceiver classes share: encoder, decoders, heads.

`backbone_options` reads `PerceiverConfig`'s encoder fields as
`PerceiverBackbone` arguments; the row helpers name parameters as
transformers' `state_dict` does (`nn.Linear` weights are `[out, in]`,
transposed for Keras; convolution kernels `[out, in, kh, kw]`, moved to
HWIO); `task_on_backbone` builds another task on a converted encoder.
"""

from perceiver_keras.conversion.common import BlockNaming
from perceiver_keras.conversion.common import (
    backbone_options as common_backbone_options,
)

# transformers' `hidden_act` -> `gelu_approximate` of our blocks.
GELU_ACTIVATIONS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}


def transpose(weight):
    """`nn.Linear` `[out, in]` -> `Dense` `[in, out]`."""
    return weight.T


def conv_kernel(weight):
    """`nn.Conv2d` `[out, in, kh, kw]` -> `Conv2D` `[kh, kw, in, out]`."""
    return weight.transpose(2, 3, 1, 0)


def linear_rows(prefix, dense, transform=transpose):
    rows = [(f"{prefix}.weight", dense.kernel, transform)]
    if dense.use_bias:
        rows.append((f"{prefix}.bias", dense.bias, None))
    return rows


def layer_norm_rows(prefix, norm):
    return [
        (f"{prefix}.weight", norm.gamma, None),
        (f"{prefix}.bias", norm.beta, None),
    ]


def batch_norm_rows(prefix, norm):
    return [
        (f"{prefix}.weight", norm.gamma, None),
        (f"{prefix}.bias", norm.beta, None),
        (f"{prefix}.running_mean", norm.moving_mean, None),
        (f"{prefix}.running_var", norm.moving_variance, None),
    ]


_HF_ATTENTION = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "output": "attention.output.dense",
    "mlp_norm": "layernorm", "mlp_hidden": "mlp.dense1",
    "mlp_output": "mlp.dense2",
}
# Both blocks are transformers' `PerceiverLayer`.
HF_BLOCKS = BlockNaming(
    cross_names={"query_norm": "attention.self.layernorm1",
                 "key_value_norm": "attention.self.layernorm2",
                 **_HF_ATTENTION},
    self_names={"attention_norm": "attention.self.layernorm1",
                **_HF_ATTENTION},
    dense_rows=linear_rows, norm_rows=layer_norm_rows, separator=".",
)


def cross_attention_rows(prefix, block):
    """A `PerceiverCrossAttentionBlock` as transformers' `PerceiverLayer`."""
    return HF_BLOCKS.rows(prefix, block)


def self_attention_rows(prefix, block):
    """A `PerceiverSelfAttentionBlock` as transformers' `PerceiverLayer`."""
    return HF_BLOCKS.rows(prefix, block)


def encoder_rows(backbone, prefix):
    """Latents, cross-attention and self-attention stack of `PerceiverModel`.

    `prefix` is `"perceiver."` inside the task classes, `""` for a bare
    `PerceiverModel`.
    """
    rows = [
        (f"{prefix}embeddings.latents", backbone.latents.embeddings, None),
        *cross_attention_rows(f"{prefix}encoder.cross_attention",
                              backbone.cross_attends[0]),
    ]
    for i, block in enumerate(backbone.self_attends):
        rows += self_attention_rows(f"{prefix}encoder.self_attends.{i}", block)
    return rows


def gelu_approximate(config):
    """`gelu_approximate` for `hidden_act`; other activations are refused."""
    act = config.get("hidden_act", "gelu")
    if act not in GELU_ACTIVATIONS:
        raise ValueError(
            f"`hidden_act` must be one of {sorted(GELU_ACTIVATIONS)} to "
            f"convert. Received: hidden_act={act!r}."
        )
    return GELU_ACTIVATIONS[act]


# `PerceiverBackbone` argument -> (`PerceiverConfig` field, its default).
ENCODER_OPTIONS = {
    "num_latents": ("num_latents", 256),
    "latent_dim": ("d_latents", 1280),
    "num_blocks": ("num_blocks", 1),
    "num_self_attends_per_block": ("num_self_attends_per_block", 26),
    "num_cross_attend_heads": ("num_cross_attention_heads", 8),
    "num_self_attend_heads": ("num_self_attention_heads", 8),
    "cross_attend_widening_factor": ("cross_attention_widening_factor", 1),
    "self_attend_widening_factor": ("self_attention_widening_factor", 1),
    "qk_channels": ("qk_channels", None),
    "v_channels": ("v_channels", None),
    "use_query_residual": ("use_query_residual", True),
    "attention_dropout": ("attention_probs_dropout_prob", 0.1),
    "latent_init_scale": ("initializer_range", 0.02),
}


def backbone_options(config):
    """`PerceiverBackbone` arguments for `PerceiverModel(config)`'s encoder.

    Defaults are `PerceiverConfig`'s. `layer_norm_eps` is not used by
    transformers (its LayerNorms keep torch's 1e-5, as ours).
    """
    return common_backbone_options(
        config, ENCODER_OPTIONS, "cross_attention_shape_for_attention",
        gelu_approximate=gelu_approximate(config),
    )


def num_labels(config):
    """Number of classes: `id2label`'s size (transformers' `num_labels`)."""
    id2label = config.get("id2label")
    if id2label:
        return len(id2label)
    return config.get("num_labels", 2)


def class_names(config):
    """`id2label` as a list indexed by class id, or None."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    return [id2label[str(i)] for i in range(len(id2label))]


def query_decoder_rows(prefix, decoder):
    """A `PerceiverQueryDecoder` with trainable queries as transformers'
    `PerceiverBasicDecoder` (`final_layer` only when it projects)."""
    rows = [
        (f"{prefix}.output_position_encodings.position_embeddings",
         decoder.trainable_queries.embeddings, None),
        *cross_attention_rows(f"{prefix}.decoding_cross_attention",
                              decoder.cross_attention),
    ]
    if decoder.output_dense is not None:
        rows += linear_rows(f"{prefix}.final_layer", decoder.output_dense)
    return rows


def task_on_backbone(cls, model, heads, kwargs):
    """A `cls` task on `model`'s (converted) backbone.

    `heads` maps the task classes this kind of checkpoint converts to onto
    `(constructor options, preprocessor)` in transformers' settings. The
    class used is the first of them that is `cls` or a subclass of it (or
    `cls` itself, when it subclasses one). `kwargs` override the options.
    When `model` is already of that class, its head weights are kept
    wherever the shapes still fit; otherwise the head is new (random), as
    with transformers' `from_pretrained` on another head.
    """
    for task_cls, (options, preprocessor) in heads.items():
        if issubclass(task_cls, cls) or issubclass(cls, task_cls):
            chosen = task_cls if issubclass(task_cls, cls) else cls
            break
    else:
        raise ValueError(
            f"This checkpoint converts to {sorted(c.__name__ for c in heads)}"
            f"; it cannot be loaded as a {cls.__name__}."
        )
    task = chosen(
        model.backbone if hasattr(model, "backbone") else model,
        preprocessor=preprocessor,
        **{**options, **kwargs},
    )
    if type(model) is chosen:
        _copy_fitting_weights(model, task)
    return task


def _copy_fitting_weights(source, target):
    """Copies every weight whose path and shape agree (head weights: the
    backbone is shared)."""
    by_path = {v.path: v for v in source.weights}
    for variable in target.weights:
        match = by_path.get(variable.path)
        if match is not None and tuple(match.shape) == tuple(variable.shape):
            variable.assign(match.value)
