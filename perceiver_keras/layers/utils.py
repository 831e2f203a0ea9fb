"""Small helpers shared by the layers."""

import numbers

import keras

from perceiver_keras.layers.normalization import PerceiverLayerNormalization


def clone_initializer(initializer):
    """A fresh copy, so sub-layers never share one seeded initializer."""
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


def layer_norm(name, dtype):
    """LayerNorm with the Perceiver's epsilon (Keras' default is 1e-3)."""
    return PerceiverLayerNormalization(epsilon=1e-5, dtype=dtype, name=name)


def apply_dropout(layer, x, training):
    """`layer(x, training=training)` for a `keras.layers.Dropout`, skipped
    at rate 0, where it returns `x`: a layer call costs about 0.1 ms on
    eager torch, and the default configs call several per block."""
    if layer.rate == 0:
        return x
    return layer(x, training=training)


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


def check_positive(name, value, optional=False, number=int):
    """A `ValueError` naming `name` unless `value` is a positive number
    (an int, or with `number=float` an int or float)."""
    if optional and value is None:
        return
    kind = numbers.Real if number is float else numbers.Integral
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive {number.__name__}"
            f"{' or None' if optional else ''}. Received: {name}={value!r}."
        )


def check_rate(name, value):
    """A `ValueError` naming `name` unless `0 <= value < 1`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0 <= value < 1
    ):
        raise ValueError(
            f"`{name}` must be a rate in [0, 1). Received: {name}={value!r}."
        )


class ConfigArgumentsMixin:
    """A layer or model whose config is the constructor arguments named in
    `config_arguments`: `__init__` ends with `self._store_config(locals())`
    and `get_config` returns them, serialized where they are layers,
    initializers or activations. Those in `initializer_arguments` are
    resolved with `keras.initializers.get` when stored."""

    config_arguments = ()
    initializer_arguments = ()

    def _store_config(self, arguments):
        for name in self.config_arguments:
            value = arguments[name]
            if name in self.initializer_arguments:
                value = keras.initializers.get(value)
            setattr(self, name, value)

    def get_config(self):
        config = super().get_config()
        for name in self.config_arguments:
            value = getattr(self, name)
            if isinstance(value, keras.layers.Layer):
                value = keras.layers.serialize(value)
            elif isinstance(value, keras.initializers.Initializer):
                value = keras.initializers.serialize(value)
            elif callable(value):  # an activation
                value = keras.activations.serialize(value)
            config[name] = value
        return config
