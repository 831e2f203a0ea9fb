import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests compile many small one-off XLA graphs (JAX compiles every eager op
# once per shape; TensorFlow's jit-compiled fit): LLVM's expensive
# optimisation passes cost more time than they save, about half of the JAX
# suite, and XLA:CPU's newer fusion emitters take about twice as long to
# compile a small op as the classic ones (JAX conformance file: 201 s with
# them, 116 s without, 2026-12-07). Results are unchanged within the
# project's tolerance; benchmarks and users keep XLA's defaults.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false",
)

# TensorFlow turns oneDNN on only on CPUs with AVX-512 or AMX; on an
# AVX2-only CPU, small models' fit steps run twice as fast with it (text
# classifier, 2026-12-07: 88-104 ms per step without, 41-55 ms with).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)
    yield


# XLA_FLAGS above trade run time for compile time: at level 0 a `text`
# classifier's JAX train step runs 94 ms instead of 30 (2026-12-07).
FULLY_OPTIMISED = {"xla_backend_optimization_level": 2,
                   "xla_llvm_disable_expensive_passes": False}


@pytest.fixture
def optimised_jit(monkeypatch):
    """For tests that run hundreds of training steps: on JAX, the functions
    Keras jit-compiles get XLA's full optimisation back (eager ops keep the
    fast-compiling flags)."""
    if keras.config.backend() != "jax":
        return
    # Keras' JAX trainer binds `jax.jit` as its module's `jit` at import.
    from keras.src.backend.jax import trainer

    jit = trainer.jit

    def optimised(fun, **kwargs):
        kwargs.setdefault("compiler_options", FULLY_OPTIMISED)
        return jit(fun, **kwargs)

    monkeypatch.setattr(trainer, "jit", optimised)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, rtol=2e-5):
    """max|diff| <= rtol * max(1, max|expected|), the project's tolerance."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    diff = float(np.abs(actual - expected).max(initial=0.0))
    assert diff <= rtol * scale, f"max|diff|={diff:.3g} > {rtol * scale:.3g}"
