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


def deserialize_with_dtype(config, dtype):
    """A sublayer from its config, under its parent's dtype policy (when
    given) rather than the one stored with the sublayer, so a model rebuilt
    under another policy has it in every sublayer."""
    if dtype is not None:
        if isinstance(dtype, keras.DTypePolicy):
            dtype = keras.dtype_policies.serialize(dtype)
        config = {**config, "config": {**config["config"], "dtype": dtype}}
    return keras.layers.deserialize(config)
