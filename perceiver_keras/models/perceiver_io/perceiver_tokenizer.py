"""Perceiver byte tokenizer: token id = UTF-8 byte + 6."""

import keras
import numpy as np
from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import TOKENIZER_CONFIG_FILE
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json
from keras_hub.src.utils.tensor_utils import canonicalize_python_string_inputs
from keras_hub.src.utils.tensor_utils import canonicalize_python_token_inputs
from keras_hub.src.utils.tensor_utils import convert_to_ragged_batch
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.src.utils.tensor_utils import restore_outer_shape
from keras_hub.src.utils.tensor_utils import tf
from keras_hub.tokenizers import Tokenizer

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone

# Ids 0..5, in the order used by DeepMind and `transformers`.
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
VOCABULARY_SIZE = NUM_SPECIAL_TOKENS + 256


def load_without_backbone(cls, preset, config_file, kwargs):
    """Loads `config_file` from a preset that has no backbone `config.json`.

    `keras_hub`'s `from_preset` needs `config.json` to find the backbone
    class; a tokenizer or preprocessor saved on its own has none.
    """
    config = load_json(preset, config_file)
    config["config"].update(kwargs)
    obj = keras.saving.deserialize_keras_object(config)
    if not isinstance(obj, cls):
        raise ValueError(
            f"`{config_file}` in preset {preset!r} holds a "
            f"{type(obj).__name__}, expected a {cls.__name__}."
        )
    return obj


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverTokenizer(Tokenizer):
    """Perceiver UTF-8 byte tokenizer (vocabulary free).

    Each UTF-8 byte `b` maps to id `b + 6`; ids 0-5 are `[PAD]`, `[BOS]`,
    `[EOS]`, `[MASK]`, `[CLS]`, `[SEP]`. `tokenize()` adds no special
    tokens: use `PerceiverTextPreprocessor` for framing and padding.

    Outputs follow `keras_hub.tokenizers.ByteTokenizer`: a single string
    gives a 1D int array, a batch gives a ragged batch (lists eagerly,
    `tf.RaggedTensor` in `tf.data`) unless `sequence_length` is set, in which
    case it is padded with `[PAD]` / truncated to a dense array.

    Args:
        sequence_length: int or None. Optional pad/truncate length.
        dtype: integer output dtype. Defaults to `"int32"`.
    """

    backbone_cls = PerceiverBackbone

    def __init__(self, sequence_length=None, dtype="int32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.sequence_length = sequence_length
        names = ("pad", "bos", "eos", "mask", "cls", "sep")
        for token, name in zip(SPECIAL_TOKENS, names):
            self._add_special_token(token, f"{name}_token")
        # Aliases used by keras_hub's generic packers (`[CLS] text [SEP]`).
        self._add_special_token("[CLS]", "start_token")
        self._add_special_token("[SEP]", "end_token")

    def vocabulary_size(self):
        """Returns 262: 6 special tokens plus 256 bytes."""
        return VOCABULARY_SIZE

    def get_vocabulary(self):
        """Special tokens, then `chr(byte)` per byte (as `transformers`)."""
        return list(SPECIAL_TOKENS) + [chr(i) for i in range(256)]

    def id_to_token(self, id):
        if not 0 <= int(id) < VOCABULARY_SIZE:
            raise ValueError(
                f"`id` must be in [0, {VOCABULARY_SIZE - 1}]. Received: id={id}"
            )
        return self.get_vocabulary()[int(id)]

    def token_to_id(self, token):
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if isinstance(token, str) and len(token) == 1 and ord(token) < 256:
            return ord(token) + NUM_SPECIAL_TOKENS
        raise ValueError(
            "`token` must be a special token or a single character with code "
            f"point < 256 (one byte). Received: token={token!r}"
        )

    def _bad_inputs(self, inputs):
        return ValueError(
            "`inputs` must be a string, a list of strings, or a string "
            f"array/tensor. Received: inputs={inputs!r} of type "
            f"{type(inputs).__name__}"
        )

    def _tokenize_python(self, inputs):
        try:
            texts, batched, outer_shape = canonicalize_python_string_inputs(
                inputs, errors="surrogateescape"
            )
        except ValueError:
            raise self._bad_inputs(inputs) from None
        encoded = (t.encode("utf-8", "surrogateescape") for t in texts)
        tokens = [[b + NUM_SPECIAL_TOKENS for b in e] for e in encoded]
        if self.sequence_length:
            n = self.sequence_length
            tokens = [t[:n] + [0] * (n - len(t[:n])) for t in tokens]
            tokens = np.array(tokens, dtype=self.compute_dtype)
        if outer_shape is not None:
            return restore_outer_shape(tokens, outer_shape)
        if not batched:
            return np.asarray(tokens[0], dtype=self.compute_dtype)
        return tokens

    @preprocessing_function
    def _tokenize_tf(self, inputs):
        if not isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) or (
            inputs.dtype != tf.string
        ):
            raise self._bad_inputs(inputs)
        unbatched = inputs.shape.rank == 0
        if unbatched:
            inputs = tf.expand_dims(inputs, 0)
        # `fixed_length=1` keeps empty strings working (unlike a squeeze).
        tokens = tf.ragged.map_flat_values(
            lambda b: tf.io.decode_raw(b, tf.uint8, fixed_length=1)[:, 0],
            tf.strings.bytes_split(inputs),
        )
        tokens = tf.cast(tokens, self.compute_dtype) + NUM_SPECIAL_TOKENS
        if self.sequence_length:
            shape = tokens.shape.as_list()
            shape[-1] = self.sequence_length
            tokens = tokens.to_tensor(shape=shape)
        return tf.squeeze(tokens, 0) if unbatched else tokens

    def tokenize(self, inputs):
        """Strings to byte ids (`b + 6`), no special tokens added."""
        if self._use_tf_workflow():
            return self._tokenize_tf(inputs)
        return self._tokenize_python(inputs)

    def _detokenize_python(self, inputs):
        ids, batched = canonicalize_python_token_inputs(inputs)
        outputs = []
        for seq in ids:
            if any(i < 0 or i >= VOCABULARY_SIZE for i in seq):
                raise ValueError(
                    f"Token ids must be in [0, {VOCABULARY_SIZE - 1}]. "
                    f"Received: {seq}"
                )
            data = bytes(i - NUM_SPECIAL_TOKENS for i in seq if i > 5)
            outputs.append(data.decode("utf-8", errors="replace"))
        return outputs if batched else outputs[0]

    @preprocessing_function
    def _detokenize_tf(self, inputs):
        byte_table = tf.constant([bytes([i]) for i in range(256)])
        ids, unbatched, _ = convert_to_ragged_batch(inputs)
        ids = tf.ragged.boolean_mask(ids, ids >= NUM_SPECIAL_TOKENS)
        text = tf.strings.reduce_join(
            tf.gather(byte_table, ids - NUM_SPECIAL_TOKENS), axis=-1
        )
        text = tf.strings.unicode_transcode(
            text, "UTF-8", "UTF-8", errors="replace"
        )
        return tf.squeeze(text, 0) if unbatched else text

    def detokenize(self, inputs):
        """Ids to strings; special ids (< 6) and padding are dropped."""
        if self._use_tf_workflow():
            return self._detokenize_tf(inputs)
        return self._detokenize_python(inputs)

    def call(self, inputs, *args, training=None, **kwargs):
        return self.tokenize(inputs, *args, **kwargs)

    # No vocabulary files: everything lives in `get_config()`.
    def save_assets(self, dir_path):
        pass

    def load_assets(self, dir_path):
        pass

    def load_preset_assets(self, preset):
        pass

    @classmethod
    def from_preset(cls, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        if check_file_exists(preset, CONFIG_FILE):
            return super().from_preset(preset, config_file, **kwargs)
        return load_without_backbone(cls, preset, config_file, kwargs)

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self.sequence_length
        return config
