"""Strings -> Perceiver AR training windows and generation prompts."""

import keras
import numpy as np
from keras_hub.models import CausalLMPreprocessor

from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_tokenizer import (
    PerceiverARTokenizer,
)


def _texts(x, name="x"):
    if isinstance(x, (str, bytes)):
        return [x], True
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # eager tf
        x = x.numpy()
    if isinstance(x, np.ndarray) and x.dtype.kind in "USO":
        return [str(t) if not isinstance(t, bytes) else t.decode()
                for t in x.reshape(-1)], False
    if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
        return list(x), False
    raise ValueError(
        f"`{name}` must be a string or a list/array of strings. Received: "
        f"{type(x).__name__}."
    )


def _is_graph_tensor(x):
    """A symbolic TensorFlow tensor (tf.data map, tf.function)."""
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return tf.is_tensor(x) and not tf.executing_eagerly()


def _ids(x):
    """Token-id input (one sequence or a batch) as a list of int lists."""
    array = x.tolist() if isinstance(x, np.ndarray) else x
    if array and isinstance(array[0], (int, np.integer)):
        return [list(array)], True
    return [list(row) for row in array], False


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverARCausalLMPreprocessor(CausalLMPreprocessor):
    """Packs text into left-padded windows for Perceiver AR.

    Training (`__call__`): each text becomes `[BOS] bytes [EOS]`, cut to its
    first `sequence_length + 1` tokens and left-padded. `x` holds the first
    `sequence_length` (`token_ids`, `padding_mask`); `y` the next token of
    each of the last `num_latents` positions (the latents, where the loss
    is), `sample_weight` masks padding there.

    Generation: prompts are tokenized (with `[BOS]`), left-padded to the
    longest prompt, then followed by free slots up to `sequence_length`
    (`max_length` of `generate`).

    Args:
        tokenizer: a `PerceiverARTokenizer` (UTF-8 bytes).
        sequence_length: training context length.
        num_latents: latents (loss positions) per window.
        add_start_token, add_end_token: frame texts with `[BOS]` / `[EOS]`.
    """

    backbone_cls = PerceiverARBackbone
    tokenizer_cls = PerceiverARTokenizer

    def __init__(self, tokenizer, sequence_length=1024, num_latents=256,
                 add_start_token=True, add_end_token=True, **kwargs):
        super().__init__(tokenizer, sequence_length=sequence_length,
                         add_start_token=add_start_token,
                         add_end_token=add_end_token, **kwargs)
        if not 0 < num_latents <= sequence_length:
            raise ValueError(
                f"`num_latents` must be in [1, sequence_length="
                f"{sequence_length}]. Received: num_latents={num_latents}."
            )
        self.num_latents = num_latents

    def build(self, input_shape):
        self.built = True

    def _frame(self, texts, add_end):
        rows = self.tokenizer.tokenize(texts)
        start = [self.tokenizer.start_token_id] if self.add_start_token else []
        end = [self.tokenizer.end_token_id] if add_end else []
        return [start + [int(t) for t in row] + end for row in rows]

    def _left_pad(self, rows, length):
        pad = self.tokenizer.pad_token_id
        ids = np.full((len(rows), length), pad, dtype="int32")
        mask = np.zeros((len(rows), length), dtype=bool)
        for i, row in enumerate(rows):
            row = row[:length]
            if row:
                ids[i, length - len(row):] = row
                mask[i, length - len(row):] = True
        return ids, mask

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "PerceiverARCausalLMPreprocessor makes its own targets from "
                "`x`; pass only texts."
            )
        length = sequence_length or self.sequence_length
        if _is_graph_tensor(x):  # inside tf.data's map: pack with NumPy
            return self._call_in_graph(x, length)
        texts, _ = _texts(x)
        rows = self._frame(texts, self.add_end_token)
        ids, mask = self._left_pad([r[:length + 1] for r in rows], length + 1)
        n = self.num_latents
        features = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
        return keras.utils.pack_x_y_sample_weight(
            features, ids[:, -n:], mask[:, -n:].astype("float32"))

    def _call_in_graph(self, x, length):
        import tensorflow as tf

        def pack(texts):
            features, y, w = self.call(texts, sequence_length=length)
            return (features["token_ids"], features["padding_mask"], y, w)

        ids, mask, y, w = tf.numpy_function(
            pack, [x], [tf.int32, tf.bool, tf.int32, tf.float32])
        ids.set_shape((None, length))
        mask.set_shape((None, length))
        y.set_shape((None, self.num_latents))
        w.set_shape((None, self.num_latents))
        return keras.utils.pack_x_y_sample_weight(
            {"token_ids": ids, "padding_mask": mask}, y, w)

    def generate_preprocess(self, x, sequence_length=None):
        length = sequence_length or self.sequence_length
        if isinstance(x, dict):
            return x
        try:
            texts, _ = _texts(x)
            rows = self._frame(texts, add_end=False)
        except ValueError:
            rows, _ = _ids(x)
        prompt = max(len(r) for r in rows)
        if prompt >= length:
            raise ValueError(
                f"The longest prompt has {prompt} tokens; `max_length` "
                f"({length}) must be larger."
            )
        ids, mask = self._left_pad(rows, prompt)
        free = length - prompt
        ids = np.pad(ids, ((0, 0), (0, free)))
        mask = np.pad(mask, ((0, 0), (0, free)))
        return {"token_ids": ids, "padding_mask": mask}

    def generate_postprocess(self, x):
        ids = np.asarray(keras.ops.convert_to_numpy(x["token_ids"]))
        mask = np.asarray(keras.ops.convert_to_numpy(x["padding_mask"]))
        special = set(self.tokenizer.special_token_ids)
        rows = [[int(t) for t, m in zip(r, k) if m and int(t) not in special]
                for r, k in zip(ids, mask)]
        return self.tokenizer.detokenize(rows)

    def get_config(self):
        config = super().get_config()
        config.update({"num_latents": self.num_latents})
        return config
