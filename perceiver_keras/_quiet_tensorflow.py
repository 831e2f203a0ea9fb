"""Imports TensorFlow silently when it is not the Keras backend.

keras-hub imports TensorFlow whenever it is installed (for tf.data and
tf-text), and TensorFlow's C++ start-up writes absl lines (oneDNN, CUDA
drivers, `cuInit`) straight to the process's stderr, bypassing Python and
`TF_CPP_MIN_LOG_LEVEL`. Under JAX or torch none of that concerns the user,
so the first import runs with file descriptor 2 pointed at /dev/null.
Errors still raise; under the TensorFlow backend nothing changes.
"""

import importlib.util
import os
import sys

import keras


def import_tensorflow_quietly():
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
        import keras_hub  # noqa: F401  (imports tensorflow_text)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
