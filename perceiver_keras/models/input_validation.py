"""Checks of model inputs at the model boundary, before any backend op runs.

Bad input gets a `ValueError` naming the argument, what was expected and
what arrived, instead of a backend stack trace or a silent cast.
"""

import keras
import numpy as np


def _shape_str(shape):
    return "(" + ", ".join("batch" if i == 0 and d is None else str(d)
                           for i, d in enumerate(shape)) + ")"


def shapes_compatible(shape, expected):
    """Same rank, and equal wherever both sizes are known."""
    shape, expected = tuple(shape), tuple(expected)
    return len(shape) == len(expected) and all(
        e is None or r is None or e == r for e, r in zip(expected, shape)
    )


def as_array_like(x, name):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except Exception as e:
        raise ValueError(
            f"`{name}` must be an array. Received: {type(x).__name__}."
        ) from e


def _is_text_or_object(x):
    return isinstance(x.dtype, np.dtype) and x.dtype.kind in "USO"


def dtype_name(x):
    """Keras' name of `x.dtype`, or NumPy's for strings and objects (which
    Keras has no name for)."""
    if _is_text_or_object(x):
        return str(x.dtype)
    return keras.backend.standardize_dtype(x.dtype)


def dtype_kind(x):
    if _is_text_or_object(x):
        return "string" if x.dtype.kind in "US" else "object"
    dtype = dtype_name(x)
    if dtype == "bool":
        return "bool"
    if "int" in dtype:
        return "int"
    if "float" in dtype:
        return "float"
    return dtype


def validate_backbone_inputs(backbone, inputs):
    """Returns `inputs` as the backbone's input dict, or raises ValueError."""
    expected_keys = list(backbone.input.keys())
    if not isinstance(inputs, dict):
        inputs = {"inputs": inputs}
    no_mask = "padding_mask" not in expected_keys
    if no_mask and inputs.get("padding_mask") is not None:
        raise ValueError(
            "`padding_mask` is not supported by this model's input adapter "
            "(its tokens do not map one-to-one to input positions). "
            "Received a padding_mask."
        )
    if no_mask:
        inputs = {k: v for k, v in inputs.items() if k != "padding_mask"}
    unknown = sorted(set(inputs) - set(expected_keys))
    if unknown or "inputs" not in inputs:
        raise ValueError(
            f"Expected a dict with keys {expected_keys} (only `inputs` is "
            f"required) or a single array. Received keys {sorted(inputs)}."
        )
    inputs = dict(inputs)
    x = inputs["inputs"] = as_array_like(inputs["inputs"], "inputs")
    expected = (None,) + tuple(backbone.inputs_shape)
    shape = tuple(x.shape)
    if not shapes_compatible(shape, expected):
        raise ValueError(
            f"`inputs` must have shape {_shape_str(expected)}. "
            f"Received: inputs.shape={shape}."
        )
    if any(d == 0 for d in shape):
        raise ValueError(
            f"`inputs` is empty: received inputs.shape={shape}; expected "
            f"{_shape_str(expected)} with no zero-sized axis."
        )
    wants = keras.backend.standardize_dtype(backbone.input["inputs"].dtype)
    wants_kind = "int" if "int" in wants else "float"
    if dtype_kind(x) != wants_kind:
        raise ValueError(
            f"`inputs` must hold {wants_kind} data ({wants}). Received "
            f"{dtype_kind(x)} data of dtype {dtype_name(x)}."
        )
    if "padding_mask" in expected_keys:
        mask = inputs.get("padding_mask")
        if mask is not None:
            mask = inputs["padding_mask"] = as_array_like(
                mask, "padding_mask"
            )
            mask_rank = len(backbone.input["padding_mask"].shape)
            want = shape[:mask_rank]
            if not shapes_compatible(mask.shape, want) or dtype_kind(
                mask
            ) not in ("bool", "int"):
                raise ValueError(
                    f"`padding_mask` must be a bool or int array of shape "
                    f"{want} (the input's batch and position axes). "
                    f"Received: shape {tuple(mask.shape)}, dtype "
                    f"{dtype_name(mask)}."
                )
        inputs["padding_mask"] = mask
    return inputs


def is_array_data(x):
    """NumPy arrays or eager tensors, possibly nested in a dict or tuple."""
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(hasattr(leaf, "__array__") for leaf in leaves)


class ValidatedInputsMixin:
    """Validates inputs on every entry point of a functional model.

    `__call__` runs Keras' own structure checks first, and JAX's
    fit/predict go straight to `call`, so both validate. Array data given
    to fit/evaluate/predict is checked before Keras starts: an error raised
    inside a JAX step would leave the model's variables purged. Subclasses
    define `validate_inputs(inputs) -> inputs`.
    """

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.validate_inputs(inputs), *args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        inputs = self.validate_inputs(inputs)
        return super().call(inputs, training=training, mask=mask)

    def compute_output_spec(self, inputs, training=None, mask=None):
        # Accept what `__call__` accepts (a single array or the dict, as
        # arrays or specs). The graph is walked with specs: a layer's
        # `compute_output_shape` sees no shape for a concrete array.
        specs = keras.tree.map_structure(
            lambda x: x if x is None or isinstance(x, keras.KerasTensor)
            else keras.KerasTensor(
                x.shape, keras.backend.standardize_dtype(x.dtype)
            ),
            self.validate_inputs(inputs),
        )
        return super().compute_output_spec(specs, training=training, mask=mask)

    def validate_data(self, x):
        if is_array_data(x):
            self.validate_inputs(x)

    def fit(self, x=None, *args, **kwargs):
        self.validate_data(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self.validate_data(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self.validate_data(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        self.validate_data(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        self.validate_data(x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x, *args, **kwargs):
        self.validate_data(x)
        return super().predict_on_batch(x, *args, **kwargs)


def check_input_adapter(backbone, adapter_cls, reads):
    """A `ValueError` unless `backbone` reads `reads` (e.g. "token ids")
    through an `adapter_cls` (a task that only works on that input kind)."""
    adapter = backbone.input_adapter
    if not isinstance(adapter, adapter_cls):
        raise ValueError(
            f"`backbone` must read {reads} through a "
            f"`{adapter_cls.__name__}`. Received a backbone with "
            f"input_adapter={type(adapter).__name__}."
        )
