"""Perceiver text preprocessor: strings to padded byte ids and a mask."""

import keras
from keras_hub.layers import StartEndPacker
from keras_hub.models import Preprocessor
from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import PREPROCESSOR_CONFIG_FILE
from keras_hub.src.utils.preset_utils import check_file_exists

from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import load_without_backbone


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverTextPreprocessor(Preprocessor):
    """Tokenizes strings and pads/truncates them to `sequence_length`.

    Returns `{"inputs": int32 [batch, sequence_length], "padding_mask": bool
    [batch, sequence_length]}` packed with `y` and `sample_weight` (an
    unbatched string gives `[sequence_length]`). Works eagerly and in
    `tf.data.Dataset.map`.

    Args:
        tokenizer: a `PerceiverTokenizer`. Defaults to a new one.
        sequence_length: int. Output length. Defaults to 2048.
        add_special_tokens: bool. `False` (default) feeds raw bytes as in
            DeepMind's masked-LM colab; `True` frames the text as
            `[CLS] text [SEP]` like `transformers`' `PerceiverTokenizer`
            (truncation keeps `[SEP]` last).
    """

    backbone_cls = PerceiverBackbone
    tokenizer_cls = PerceiverTokenizer

    def __init__(
        self,
        tokenizer=None,
        sequence_length=2048,
        add_special_tokens=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer or PerceiverTokenizer()
        self.sequence_length = sequence_length
        self.add_special_tokens = add_special_tokens
        tok = self.tokenizer
        self.packer = StartEndPacker(
            sequence_length=sequence_length,
            start_value=tok.cls_token_id if add_special_tokens else None,
            end_value=tok.sep_token_id if add_special_tokens else None,
            pad_value=tok.pad_token_id,
            return_padding_mask=True,
        )

    def call(self, x, y=None, sample_weight=None):
        # Tokenizer and packer each pick the Python or the tf.data path.
        token_ids, padding_mask = self.packer(
            self.tokenizer(x), sequence_length=self.sequence_length
        )
        x = {"inputs": token_ids, "padding_mask": padding_mask}
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    @classmethod
    def from_preset(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kw):
        if check_file_exists(preset, CONFIG_FILE):
            return super().from_preset(preset, config_file, **kw)
        return load_without_backbone(cls, preset, config_file, kw)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "add_special_tokens": self.add_special_tokens,
            }
        )
        return config
