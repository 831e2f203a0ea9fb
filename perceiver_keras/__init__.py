"""Perceiver and Perceiver IO for Keras 3 (TensorFlow, JAX, PyTorch)."""

from perceiver_keras.layers import *  # noqa: F401,F403
from perceiver_keras.models.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_classifier import PerceiverClassifier
from perceiver_keras.models.perceiver_configs import count_params
from perceiver_keras.models.perceiver_configs import recommended_config
from perceiver_keras.models.perceiver_configs import token_shape
from perceiver_keras.models.perceiver_io import PerceiverIO
from perceiver_keras.models.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)
from perceiver_keras.models.perceiver_tokenizer import PerceiverTokenizer

__version__ = "0.1.0"
