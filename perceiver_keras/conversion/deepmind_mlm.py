"""DeepMind's byte-level masked language model: kind mlm.

As in DeepMind's `masked_language_modelling.ipynb`: `hk.Embed` plus a
`TrainablePositionEncoding` added, `PerceiverEncoder(**encoder)`,
`BasicDecoder(**decoder)` queried with `query_mask=input_mask`, and the tied
`EmbeddingDecoder`. `deepmind_config` holds the colab's `encoder_config` and
`decoder_config` under `encoder` and `decoder`, with `d_model`, `d_latents`,
`max_seq_len` and `vocab_size`.
"""

import keras
import numpy as np

from perceiver_keras.conversion.common import cross_attention_rows
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.deepmind import backbone_options
from perceiver_keras.conversion.deepmind import check_keys
from perceiver_keras.conversion.deepmind import encoder_rows
from perceiver_keras.conversion.deepmind import require
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.perceiver_io.perceiver_masked_lm_preprocessor import (
    PerceiverMaskedLMPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import VOCABULARY_SIZE

TOP_LEVEL_KEYS = (
    "d_model", "d_latents", "max_seq_len", "vocab_size", "encoder", "decoder",
)
DECODER_KEYS = (
    "output_num_channels", "position_encoding_type", "output_index_dims",
    "num_z_channels", "qk_channels", "v_channels", "num_heads",
    "final_project", "use_query_residual", "trainable_position_encoding_kwargs",
    "concat_preprocessed_input", "name",
)
DECODER_SCOPE = "basic_decoder"


def build_task(deepmind_config):
    """A `PerceiverMaskedLM` with random weights."""
    cfg = deepmind_config
    check_keys(cfg, TOP_LEVEL_KEYS, "deepmind_config")
    decoder = cfg.get("decoder", {})
    check_keys(decoder, DECODER_KEYS, "decoder")
    require(decoder, "position_encoding_type", ("trainable",), "decoder")
    require(decoder, "concat_preprocessed_input", (False,), "decoder")
    d_model, max_seq_len = cfg.get("d_model", 768), cfg.get("max_seq_len", 2048)
    vocab_size = cfg.get("vocab_size", VOCABULARY_SIZE)
    output_dims = decoder.get("output_index_dims", max_seq_len)
    if output_dims not in (max_seq_len, [max_seq_len], (max_seq_len,)):
        raise ValueError(
            "`decoder.output_index_dims` must equal `max_seq_len` (one query "
            f"per input position). Received: {output_dims} and {max_seq_len}."
        )
    queries = decoder.get("trainable_position_encoding_kwargs") or {}
    backbone = PerceiverBackbone(
        inputs_shape=(max_seq_len,),
        input_adapter=PerceiverTokenAdapter(
            vocab_size, d_model, max_seq_len, name="input_adapter"
        ),
        **backbone_options(cfg.get("encoder", {})),
    )
    # The byte tokenizer only fits the byte vocabulary.
    preprocessor = None
    if vocab_size == VOCABULARY_SIZE:
        preprocessor = PerceiverMaskedLMPreprocessor(
            sequence_length=max_seq_len
        )
    return PerceiverMaskedLM(
        backbone,
        decoder_num_heads=decoder.get("num_heads", 1),
        decoder_qk_channels=decoder.get("qk_channels"),
        decoder_v_channels=decoder.get("v_channels"),
        decoder_query_channels=queries.get("num_channels"),
        decoder_use_query_residual=decoder.get("use_query_residual", False),
        decoder_output_channels=(
            decoder.get("output_num_channels")
            if decoder.get("final_project", True) else None
        ),
        preprocessor=preprocessor,
    )


def weight_rows(task, deepmind_config):
    adapter, decoder = task.backbone.input_adapter, task.decoder
    rows = [
        ("embed/embeddings", adapter.token_embedding.embeddings, None),
        ("trainable_position_encoding/pos_embs",
         adapter.positions.embeddings, None),
        *encoder_rows(task.backbone, deepmind_config.get("encoder", {})),
        (f"{DECODER_SCOPE}/~/trainable_position_encoding/pos_embs",
         decoder.trainable_queries.embeddings, None),
        *cross_attention_rows(f"{DECODER_SCOPE}/cross_attention",
                              decoder.cross_attention),
        ("embedding_decoder/bias", task.logits.bias, None),
    ]
    if decoder.output_dense is not None:
        rows += dense_rows(f"{DECODER_SCOPE}/output", decoder.output_dense)
    return rows


def run_inputs(task, inputs):
    """`token_ids` and `input_mask` `[B, L]` -> `{"logits": [B, L, vocab]}`."""
    logits = task(
        {
            "inputs": np.asarray(inputs["token_ids"], "int32"),
            "padding_mask": np.asarray(inputs["input_mask"]).astype(bool),
        },
        training=False,
    )
    return {"logits": keras.ops.convert_to_numpy(logits)}
