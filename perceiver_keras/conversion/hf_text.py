"""transformers' byte-level text classes and the bare `PerceiverModel`.

- `PerceiverForMaskedLM` -> `PerceiverMaskedLM`: byte embedding plus learned
  positions (`max_position_embeddings`), the encoder, one learned query per
  position (8 heads, query/key width 256, value width `d_model`, no query
  residual, no final projection) and the tied output embedding. transformers
  ignores the decoder's query mask: logits at padded positions are those of
  an unmasked query.
- `PerceiverForSequenceClassification` -> `PerceiverTextClassifier`: the
  same encoder, one learned query of `d_latents` channels with a query
  residual, a Linear to `num_labels`.
- `PerceiverModel` -> `PerceiverBackbone`: without a preprocessor its input
  is `[B, M, d_model]` arrays; with a `PerceiverTextPreprocessor` (found
  from the weights) token ids. Other preprocessors and decoders of a bare
  `PerceiverModel` are not recorded in `config.json` and are refused.

Text is framed as `[CLS] ... [SEP]` and padded to `max_position_embeddings`
(transformers' `PerceiverTokenizer`). Token ids shorter than that are padded
with a masked tail, which changes no output.
"""


import keras
import numpy as np

from perceiver_keras.conversion.hf_common import backbone_options
from perceiver_keras.conversion.hf_common import encoder_rows
from perceiver_keras.conversion.hf_common import num_labels
from perceiver_keras.conversion.hf_common import query_decoder_rows
from perceiver_keras.conversion.hf_common import task_on_backbone
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.perceiver_io.perceiver_masked_lm_preprocessor import (
    PerceiverMaskedLMPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
    PerceiverTextClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import VOCABULARY_SIZE

TASKS = {
    "PerceiverForMaskedLM": PerceiverMaskedLM,
    "PerceiverForSequenceClassification": PerceiverTextClassifier,
}
TEXT_EMBEDDING = "input_preprocessor.embeddings.weight"
# transformers' PerceiverForMaskedLM decoder, fixed in its constructor.
MLM_DECODER_HEADS = 8
MLM_DECODER_QK_CHANNELS = 8 * 32


def _max_length(config):
    return config.get("max_position_embeddings", 2048)


def heads(config, first=None):
    """Task classes of text checkpoints, their options and preprocessors;
    `first` (a task class) is listed first."""
    length, d_model = _max_length(config), config.get("d_model", 768)
    byte_vocabulary = config.get("vocab_size", 262) == VOCABULARY_SIZE
    mlm_options = dict(
        decoder_num_heads=MLM_DECODER_HEADS,
        decoder_qk_channels=MLM_DECODER_QK_CHANNELS,
        decoder_v_channels=d_model,
        decoder_query_channels=d_model,
        decoder_use_query_residual=False,
        decoder_output_channels=None,
        decoder_query_mask=False,  # transformers does not mask the queries
    )
    classifier_options = dict(
        num_classes=num_labels(config),
        decoder_num_heads=1,
        decoder_query_channels=config.get("d_latents", 1280),
        decoder_use_query_residual=True,
    )
    result = {
        PerceiverMaskedLM: (mlm_options, PerceiverMaskedLMPreprocessor(
            sequence_length=length, add_special_tokens=True,
        ) if byte_vocabulary else None),
        PerceiverTextClassifier: (classifier_options, PerceiverTextPreprocessor(
            sequence_length=length, add_special_tokens=True,
        ) if byte_vocabulary else None),
    }
    if first is not None:
        result = {first: result.pop(first), **result}
    return result


def _text_backbone(config):
    length = _max_length(config)
    return PerceiverBackbone(
        inputs_shape=(length,),
        input_adapter=PerceiverTokenAdapter(
            config.get("vocab_size", 262), config.get("d_model", 768), length,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=config.get("initializer_range", 0.02)
            ),
            name="input_adapter",
        ),
        **backbone_options(config),
    )


def _bare_model_kind(tensor_names):
    """"bare", "text", or a ValueError for what config.json cannot rebuild."""
    unknown = sorted(
        n for n in tensor_names
        if n.startswith(("input_preprocessor.", "decoder.",
                         "output_postprocessor."))
        and not n.startswith("input_preprocessor.embeddings.")
        and not n.startswith("input_preprocessor.position_embeddings.")
    )
    if unknown:
        raise ValueError(
            "This PerceiverModel has a preprocessor or decoder that "
            "config.json does not describe; only a PerceiverTextPreprocessor "
            f"can be rebuilt. Received weights such as {unknown[:3]}."
        )
    return "text" if TEXT_EMBEDDING in tensor_names else "bare"


def build_task(architecture, config, processor_config=None, tensor_names=()):
    if architecture == "PerceiverModel":
        if _bare_model_kind(tensor_names) == "text":
            return _text_backbone(config)
        return PerceiverBackbone(
            inputs_shape=(None, config.get("d_model", 768)),
            **backbone_options(config),
        )
    task_cls = TASKS[architecture]
    options, preprocessor = heads(config)[task_cls]
    return task_cls(_text_backbone(config), preprocessor=preprocessor,
                    **options)


def new_task(cls, model, config, processor_config, kwargs):
    first = type(model) if type(model) in TASKS.values() else None
    return task_on_backbone(cls, model, heads(config, first), kwargs)


def weight_rows(model, architecture, config):
    if architecture == "PerceiverModel":
        return [*_adapter_rows(model, ""), *encoder_rows(model, "")]
    rows = [
        *_adapter_rows(model.backbone, "perceiver."),
        *encoder_rows(model.backbone, "perceiver."),
    ]
    if architecture == "PerceiverForMaskedLM":
        return rows + [
            *query_decoder_rows("perceiver.decoder", model.decoder),
            ("embedding_decoder.bias", model.logits.bias, None),
        ]
    return rows + query_decoder_rows("perceiver.decoder.decoder",
                                     model.decoder)


def _adapter_rows(backbone, prefix):
    adapter = backbone.input_adapter
    if not isinstance(adapter, PerceiverTokenAdapter):
        return []
    return [
        (f"{prefix}input_preprocessor.embeddings.weight",
         adapter.token_embedding.embeddings, None),
        (f"{prefix}input_preprocessor.position_embeddings.weight",
         adapter.positions.embeddings, None),
    ]


def _padded_tokens(inputs, length):
    """`{"inputs", "padding_mask"}` padded to `length` with a masked tail."""
    ids = inputs.get("inputs", inputs.get("input_ids"))
    if ids is None:
        raise ValueError(
            "`inputs` must hold `inputs` (or `input_ids`), token ids "
            f"[batch, length]. Received keys {sorted(inputs)}."
        )
    ids = np.asarray(ids)
    mask = inputs.get("attention_mask")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape or ids.shape[1] > length:
        raise ValueError(
            f"`inputs` must be token ids [batch, length <= {length}] with an "
            "`attention_mask` of the same shape. Received shapes "
            f"{ids.shape} and {mask.shape}."
        )
    pad = ((0, 0), (0, length - ids.shape[1]))
    return {
        "inputs": np.pad(ids.astype("int32"), pad),
        "padding_mask": np.pad(mask.astype(bool), pad),
    }


def run_inputs(model, architecture, inputs):
    """transformers' forward arguments -> its output, by name.

    The masked LM's decoder runs without a query mask, as transformers'.
    """
    to_numpy = keras.ops.convert_to_numpy
    if architecture == "PerceiverModel":
        if isinstance(model.input_adapter, PerceiverTokenAdapter):
            x = _padded_tokens(inputs, model.inputs_shape[0])
        else:
            x = {"inputs": np.asarray(inputs["inputs"], "float32")}
            if inputs.get("attention_mask") is not None:
                x["padding_mask"] = np.asarray(inputs["attention_mask"],
                                               bool)
        return {"last_hidden_state": to_numpy(model(x, training=False))}
    x = _padded_tokens(inputs, model.backbone.inputs_shape[0])
    return {"logits": to_numpy(model(x, training=False))}


EXAMPLE_TEXTS = [
    "This is an incomplete sentence where some words are missing.",
    "Perceiver IO reads bytes: é, ß, 😀.",
]


def example_inputs(model, architecture):
    """Two texts through the byte preprocessor (random ids or arrays when
    there is none), as `inputs` and `attention_mask`."""
    backbone = model if architecture == "PerceiverModel" else model.backbone
    rng = np.random.default_rng(0)
    if not isinstance(backbone.input_adapter, PerceiverTokenAdapter):
        width = backbone.inputs_shape[-1]
        return {"inputs": rng.normal(size=(2, 16, width)).astype("float32"),
                "attention_mask": np.array([[1] * 16, [1] * 9 + [0] * 7])}
    length = backbone.inputs_shape[0]
    preprocessor = PerceiverTextPreprocessor(
        sequence_length=length, add_special_tokens=True
    )
    x = preprocessor(EXAMPLE_TEXTS)
    ids = keras.ops.convert_to_numpy(x["inputs"]).astype("int64")
    vocabulary = backbone.input_adapter.vocabulary_size
    ids = np.minimum(ids, vocabulary - 1)
    mask = keras.ops.convert_to_numpy(x["padding_mask"]).astype("int64")
    return {"inputs": ids, "attention_mask": mask}
