"""`export()` for the Perceiver tasks: Keras' exporters, with what they
need for these models.

Keras' `Model.export` is used as it is, with three fixes:

- The input signature is the model's input dict with a free batch axis,
  given explicitly. Keras otherwise requires a model "called" through
  `__call__`, and JAX's `predict` never does so (ONNX on JAX refused).
- ONNX on TensorFlow (tf2onnx): an input named like an output (the
  multimodal autoencoder's "image", "audio", "label" in and out) makes
  tf2onnx fail with "graph input ... not exist"; such inputs are exported
  as "<name>_input".
- OpenVINO on TensorFlow: OpenVINO's TensorFlow frontend makes every op
  without consumers an output, and each `ops.shape(x)[i]` on a tensor with
  a free batch axis leaves such ops (unused slices of the shape). Those
  extra scalar outputs are removed, so the IR has the model's outputs only.
"""

import os

import keras


def default_input_signature(model):
    """The model's inputs as `keras.InputSpec`s with a free batch axis, in
    the structure `model(...)` takes (a one-element list: one argument)."""
    def spec(tensor):
        return keras.InputSpec(
            shape=(None,) + tuple(tensor.shape[1:]),
            dtype=keras.backend.standardize_dtype(tensor.dtype),
            name=tensor.name,
        )

    return [keras.tree.map_structure(spec, model._inputs_struct)]


def _output_names(model):
    outputs = model._outputs_struct
    return set(outputs) if isinstance(outputs, dict) else set()


def _rename_inputs_named_like_outputs(model, input_signature):
    taken = _output_names(model)

    def rename(spec):
        if not isinstance(spec, keras.InputSpec) or spec.name not in taken:
            return spec
        return keras.InputSpec(shape=spec.shape, dtype=spec.dtype,
                               name=f"{spec.name}_input")

    return keras.tree.map_structure(rename, input_signature)


def _drop_dangling_openvino_outputs(filepath, num_outputs):
    """Keeps the outputs of the exported function (TensorFlow names them
    `Identity`, `Identity_1`, ...); the others are OpenVINO's leftovers."""
    import openvino as ov

    core = ov.Core()
    ir = core.read_model(filepath)
    results = ir.get_results()
    kept = [r for r in results if any(
        name.split(":")[0].split("_")[0] == "Identity"
        for name in r.output(0).get_names()
    )]
    if len(kept) == len(results) or len(kept) != num_outputs:
        return  # nothing to drop, or not recognisably the leftovers
    for result in results:
        if result not in kept:
            ir.remove_result(result)
    # Written beside, then moved: the weights file is mapped while read.
    partial = filepath[:-len(".xml")] + ".partial"
    ov.serialize(ir, partial + ".xml", partial + ".bin")
    del ir
    os.replace(partial + ".bin", filepath[:-len(".xml")] + ".bin")
    os.replace(partial + ".xml", filepath)


class ExportMixin:
    """`export()` as Keras', fixed for these models (see module doc)."""

    def export(self, filepath, format="tf_saved_model", verbose=None,
               input_signature=None, **kwargs):
        """Exports the model's forward pass for serving (Keras'
        `Model.export`): `format` is "tf_saved_model", "onnx", "openvino"
        or "litert" (where Keras supports it for the backend; see the
        README's "Export to serving formats"). The default signature is the
        input dict with a free batch axis."""
        if input_signature is None:
            input_signature = default_input_signature(self)
        backend = keras.backend.backend()
        if format == "onnx" and backend == "tensorflow":
            input_signature = _rename_inputs_named_like_outputs(
                self, input_signature
            )
        result = super().export(filepath, format=format, verbose=verbose,
                                input_signature=input_signature, **kwargs)
        if format == "openvino" and backend in ("tensorflow", "jax"):
            _drop_dangling_openvino_outputs(
                str(filepath), len(keras.tree.flatten(self.outputs))
            )
        return result
