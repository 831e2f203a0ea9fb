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


def compute_attention_maps(model, names, inputs, forward):
    """`{name: NumPy weights}` of `forward(inputs, names)` on `model`.

    `inputs` are the model's validated input dict (arrays or None).
    """
    inputs = {
        key: None if value is None else keras.ops.convert_to_tensor(value)
        for key, value in inputs.items()
    }
    if keras.backend.backend() == "jax":
        values = [variable.value for variable in model.variables]
        maps = _compiled(model, names, forward)(values, inputs)
    else:
        maps = forward(inputs, names)
    return {name: keras.ops.convert_to_numpy(maps[name]) for name in names}


def _compiled(model, names, forward):
    import jax

    functions = model.__dict__.get("_attention_maps_functions")
    if functions is None:
        # Not tracked by Keras: the functions hold no model state.
        functions = {}
        object.__setattr__(model, "_attention_maps_functions", functions)
    if names not in functions:
        variables = model.variables

        def maps_of(values, inputs):
            with keras.StatelessScope(state_mapping=zip(variables, values)):
                return forward(inputs, names)

        functions[names] = jax.jit(maps_of)
    return functions[names]
