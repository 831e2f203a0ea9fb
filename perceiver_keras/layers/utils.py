"""Small helpers shared by the layers."""

import keras


def clone_initializer(initializer):
    """A fresh copy, so sub-layers never share one seeded initializer."""
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


def layer_norm(name, dtype):
    """LayerNorm with the Perceiver's epsilon (Keras' default is 1e-3)."""
    return keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name=name)


def gelu(approximate):
    """GELU: tanh approximation (DeepMind) or exact erf (transformers)."""

    def activation(x):
        return keras.activations.gelu(x, approximate=approximate)

    return activation
