"""Perceiver and Perceiver IO for Keras 3 (TensorFlow, JAX, PyTorch)."""

# The `perceiver-keras` command answers --help and bad arguments before
# Keras and a backend start (it imports nothing else).
from perceiver_keras.cli import answer_early as _answer_early

_answer_early()

from perceiver_keras._quiet_tensorflow import import_tensorflow_quietly

import_tensorflow_quietly()

from perceiver_keras.layers import *  # noqa: F401,F403
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_classifier import PerceiverClassifier
from perceiver_keras.models.perceiver_io.perceiver_configs import count_params
from perceiver_keras.models.perceiver_io.perceiver_configs import recommended_config
from perceiver_keras.models.perceiver_io.perceiver_configs import token_shape
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_image_classifier_preprocessor import (
    PerceiverImageClassifierPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_image_converter import (
    PerceiverImageConverter,
)
from perceiver_keras.models.perceiver_io.perceiver_io import PerceiverIO
from perceiver_keras.models.perceiver_io.perceiver_masked_lm import PerceiverMaskedLM
from perceiver_keras.models.perceiver_io.perceiver_masked_lm_preprocessor import (
    PerceiverMaskedLMPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_multimodal_autoencoder import (
    PerceiverMultimodalAutoencoder,
)
from perceiver_keras.models.perceiver_io.perceiver_optical_flow import PerceiverOpticalFlow
from perceiver_keras.models.perceiver_task import PerceiverTask
from perceiver_keras.models.perceiver_io.perceiver_text_classifier import (
    PerceiverTextClassifier,
)
from perceiver_keras.models.perceiver_io.perceiver_text_preprocessor import (
    PerceiverTextPreprocessor,
)
from perceiver_keras.models.perceiver_io.perceiver_tokenizer import PerceiverTokenizer

# Converters register their `from_preset` routes (hf://, save_pretrained
# directories) on import; the model classes import no converter.
from perceiver_keras.conversion import hf as _hf_routes  # noqa: F401
from perceiver_keras.conversion import deepmind_download as _dm_downloads  # noqa: F401

__version__ = "0.1.0"

# Perceiver Resampler (Flamingo / IDEFICS / Idefics2).
from perceiver_keras.layers.resampler import PerceiverResampler  # noqa: E402
from perceiver_keras.models.resampler.resampler_backbone import (  # noqa: E402
    PerceiverResamplerBackbone,
)
from perceiver_keras.models.resampler.resampler_encoder import (  # noqa: E402
    PerceiverResamplerEncoder,
)

# Perceiver AR.
from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (  # noqa: E402
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm import (  # noqa: E402
    PerceiverARCausalLM,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E402
    PerceiverARCausalLMPreprocessor,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_tokenizer import (  # noqa: E402
    PerceiverARTokenizer,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_sentence_piece_tokenizer import (  # noqa: E402
    PerceiverARSentencePieceTokenizer,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_metrics import (  # noqa: E402
    BitsPerToken,
    Perplexity,
)

# Hierarchical Perceiver (HiP).
from perceiver_keras.models.hip.hip_backbone import HiPBackbone  # noqa: E402
from perceiver_keras.models.hip.hip_classifier import HiPClassifier  # noqa: E402
from perceiver_keras.models.hip.hip_masked_autoencoder import (  # noqa: E402
    HiPMaskedAutoencoder,
)
