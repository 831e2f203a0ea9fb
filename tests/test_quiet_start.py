"""Importing the package under JAX or torch prints nothing: TensorFlow's
C++ start-up lines (absl, oneDNN, CUDA drivers, cuInit) are not shown."""

import os
import subprocess
import sys

import keras
import pytest


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="TensorFlow's own start-up is its backend's")
def test_import_is_silent_under_other_backends():
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    code = ("import sys, perceiver_keras; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr[:2000]
