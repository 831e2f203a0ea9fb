"""What every backbone's `attention_maps(inputs, layers=None)` shares.

A backbone names its attention layers (`attention_layer_names`) and gives a
`forward(inputs, names) -> {name: weights}` that calls its layers directly
with `return_attention=True` for the layers named. The weights cannot be
extra outputs of a functional model sharing the layers: a Keras layer keeps
one output structure per graph. So the forward runs eagerly, or on JAX as
one compiled function (JAX dispatches eager ops one by one, each compiled on
first use: slow).
"""

import keras


def attention_names_from(layers, available):
    """`layers` (None, a name or names) as a tuple of available names."""
    if layers is None:
        return tuple(available)
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise ValueError(
            f"`layers` must be None or names from {list(available)}. "
            f"Received: layers={layers!r}."
        )
    return names


def compute_attention_maps(model, names, inputs, forward, options=()):
    """`{name: NumPy weights}` of `forward(inputs, names)` on `model`.

    `inputs` are the model's validated input dict (arrays or None);
    `options`: what else `forward` depends on (hashable; one compiled
    function per value).
    """
    inputs = {
        key: None if value is None else keras.ops.convert_to_tensor(value)
        for key, value in inputs.items()
    }
    if keras.backend.backend() == "jax":
        values = [variable.value for variable in model.variables]
        maps = _compiled(model, (names, options), forward)(values, inputs)
    else:
        maps = forward(inputs, names)
    return {name: keras.ops.convert_to_numpy(maps[name]) for name in names}


def _compiled(model, key, forward):
    import jax

    functions = model.__dict__.get("_attention_maps_functions")
    if functions is None:
        # Not tracked by Keras: the functions hold no model state.
        functions = {}
        object.__setattr__(model, "_attention_maps_functions", functions)
    if key not in functions:
        variables = model.variables

        def maps_of(values, inputs):
            with keras.StatelessScope(state_mapping=zip(variables, values)):
                return forward(inputs, key[0])

        functions[key] = jax.jit(maps_of)
    return functions[key]


def call_recording(layer, name, names, maps, *args, **kwargs):
    """`layer(*args, **kwargs)`; when `name` is in `names`, calls it with
    `return_attention=True` and stores its weights in `maps[name]`."""
    if name not in names:
        return layer(*args, **kwargs)
    out, maps[name] = layer(*args, return_attention=True, **kwargs)
    return out


def then(result, return_attention, fn):
    """`fn(output)` of a call that may return `(output, weights)`, keeping
    the weights."""
    if not return_attention:
        return fn(result)
    out, weights = result
    return fn(out), weights


def inputs_model(model, layers):
    """A functional model from `model`'s inputs to `{layer name: inputs of
    its first call}` for `layers` (a tuple of its layers), cached; it runs
    only what they need."""
    models = model.__dict__.get("_attention_inputs_models")
    if models is None:
        models = {}  # Not tracked by Keras, as `_compiled`'s functions.
        object.__setattr__(model, "_attention_inputs_models", models)
    key = tuple(layer.name for layer in layers)
    if key not in models:
        models[key] = keras.Model(
            model.input, {layer.name: layer.input for layer in layers}
        )
    return models[key]
