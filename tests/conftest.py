import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)
    yield


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, rtol=2e-5):
    """max|diff| <= rtol * max(1, max|expected|), the project's tolerance."""
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    diff = float(np.abs(actual - expected).max(initial=0.0))
    assert diff <= rtol * scale, f"max|diff|={diff:.3g} > {rtol * scale:.3g}"
