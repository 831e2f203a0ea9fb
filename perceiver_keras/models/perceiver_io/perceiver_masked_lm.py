"""Byte-level masked language modelling with Perceiver IO."""

import keras
import numpy as np
from keras import ops

from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.models.input_validation import check_input_adapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_masked_lm_preprocessor import (
    PerceiverMaskedLMPreprocessor,
)
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_task import query_decoder
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import NUM_SPECIAL_TOKENS
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import SPECIAL_TOKENS


class PerceiverTiedLogits(keras.layers.Layer):
    """`logits = hidden @ E^T + bias`, E the input token embedding (tied).

    DeepMind's `EmbeddingDecoder`: the output projection reuses the input
    embedding matrix and adds its own bias. Like keras-hub's `MaskedLMHead`,
    the layer holds the `token_embedding` layer it shares weights with. It
    has no config of its own: `PerceiverMaskedLM` creates it and links it
    to the backbone's embedding whenever the task is built.
    """

    def __init__(self, token_embedding, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding

    def build(self, input_shape):
        self.bias = self.add_weight(
            shape=(self.token_embedding.input_dim,),
            initializer="zeros",
            name="bias",
        )
        self.built = True

    def call(self, hidden):
        if getattr(self.token_embedding, "quantization_mode", None):
            # A quantized table holds integers plus scales: let the
            # embedding dequantize its own rows (any Keras quantization mode).
            ids = ops.arange(self.token_embedding.input_dim, dtype="int32")
            embeddings = ops.cast(self.token_embedding(ids), hidden.dtype)
        else:
            embeddings = ops.cast(self.token_embedding.embeddings, hidden.dtype)
        logits = ops.matmul(hidden, ops.transpose(embeddings))
        return logits + ops.cast(self.bias, hidden.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.token_embedding.input_dim,)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMaskedLM(PerceiverTask):
    """Predicts every byte of a sequence; masked bytes are the task.

    DeepMind's byte-level masked language model: token embedding plus learned
    positions, the Perceiver encoder, then one learned query per position
    cross-attends to the latents and the tied embedding gives logits over the
    262 ids. The queries are masked like the inputs: at padded positions the
    attention output is zero (the logits there are defined but meaningless).

    Inputs: `{"inputs": int [B, L], "padding_mask": bool [B, L]}` (the mask
    is optional: all positions valid). Output: logits `[B, L, 262]`.

    Args:
        backbone: a `PerceiverBackbone` with a `PerceiverTokenAdapter`.
        decoder_num_heads, decoder_qk_channels, decoder_v_channels,
        decoder_use_query_residual: the decoder cross-attention.
        decoder_query_channels: width of the learned queries (default: the
            token embedding width, as in DeepMind's model).
        decoder_output_channels: optional Dense after the cross-attention
            (DeepMind's `final_project`; None for the released model). Must
            equal the embedding width when set.
        decoder_query_mask: mask the decoder queries with `padding_mask`
            (DeepMind). transformers does not: False reproduces it.
        preprocessor: a `PerceiverMaskedLMPreprocessor` for `fit`.

    Example:
    ```python
    mlm = PerceiverMaskedLM.from_preset("perceiver_io_language_bytes")
    mlm.fill_mask("This is an incomplete sentence where some words are"
                  + "[MASK]" * 9)
    # 'This is an incomplete sentence where some words are missing.'
    ```
    """

    backbone_cls = PerceiverBackbone
    preprocessor_cls = PerceiverMaskedLMPreprocessor
    config_arguments = (
        "decoder_num_heads", "decoder_qk_channels", "decoder_v_channels",
        "decoder_query_channels", "decoder_use_query_residual",
        "decoder_output_channels", "decoder_query_mask",
    )
    default_learning_rate = 1e-4

    def __init__(
        self,
        backbone,
        decoder_num_heads=8,
        decoder_qk_channels=None,
        decoder_v_channels=None,
        decoder_query_channels=None,
        decoder_use_query_residual=False,
        decoder_output_channels=None,
        decoder_query_mask=True,
        preprocessor=None,
        **kwargs,
    ):
        check_input_adapter(backbone, PerceiverTokenAdapter, "token ids")
        adapter = backbone.input_adapter
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder = query_decoder(
            backbone, locals(),
            output_index_dims=(adapter.max_sequence_length,),
            query_encoding="trainable",
            query_channels=decoder_query_channels or adapter.hidden_dim,
            output_channels=decoder_output_channels,
        )
        self.logits = PerceiverTiedLogits(
            adapter.token_embedding, dtype=backbone.dtype_policy, name="logits"
        )

        # === Functional model ===
        inputs = backbone.input
        query_mask = inputs.get("padding_mask") if decoder_query_mask else None
        hidden = self.decoder(backbone(inputs), query_mask=query_mask)
        outputs = self.logits(hidden)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self._store_config(locals())

    @property
    def sequence_length(self):
        return self.backbone.input_adapter.max_sequence_length

    def default_loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def default_weighted_metrics(self):
        # The preprocessor weights the loss and accuracy by masked positions.
        return [keras.metrics.SparseCategoricalAccuracy("accuracy")]

    def fill_mask(self, text, mask_token="[MASK]"):
        """Replaces each `mask_token` in `text` with the predicted byte.

        Byte-level, as DeepMind's colab: every occurrence of `mask_token`
        stands for exactly one masked UTF-8 byte, so mask a word with as many
        placeholders as it has bytes (`"[MASK]" * 9` for `" missing."`). The
        rest of the text is fed as raw bytes, without special tokens, padded
        to the model's sequence length. Each masked byte is the most likely
        byte (greedy argmax over the 256 byte ids; special ids are never
        chosen) and the filled bytes are decoded as UTF-8, with invalid
        sequences replaced by U+FFFD.

        Args:
            text: a string or a list of strings.
            mask_token: the placeholder string for one masked byte.

        Returns:
            The completed string (a list for a list input).
        """
        if not isinstance(mask_token, str) or not mask_token:
            raise ValueError(
                "`mask_token` must be a non-empty string. Received: "
                f"mask_token={mask_token!r}."
            )
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(
                "`text` must be a string or a non-empty list of strings. "
                f"Received: text={text!r:.200}."
            )
        length = self.sequence_length
        token_ids = np.zeros((len(texts), length), "int32")
        padding_mask = np.zeros((len(texts), length), bool)
        masked = np.zeros((len(texts), length), bool)
        mask_id = SPECIAL_TOKENS.index("[MASK]")
        for row, t in enumerate(texts):
            ids = []
            for i, piece in enumerate(t.split(mask_token)):
                if i:
                    ids.append(mask_id)
                ids += [b + NUM_SPECIAL_TOKENS for b in piece.encode("utf-8")]
            if len(ids) > length:
                raise ValueError(
                    f"`text` must fit in {length} bytes (each mask_token "
                    f"counts one). Received {len(ids)} bytes: {t!r:.100}."
                )
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
            masked[row, : len(ids)] = np.asarray(ids) == mask_id
        logits = self({"inputs": token_ids, "padding_mask": padding_mask})
        logits = ops.convert_to_numpy(logits)[..., NUM_SPECIAL_TOKENS:]
        predicted = logits.argmax(-1) + NUM_SPECIAL_TOKENS
        filled = np.where(masked, predicted, token_ids)
        results = [
            bytes(
                int(i) - NUM_SPECIAL_TOKENS for i in ids[keep]
            ).decode("utf-8", errors="replace")
            for ids, keep in zip(filled, padding_mask)
        ]
        return results if batched else results[0]
