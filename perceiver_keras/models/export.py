"""`export()` for the Perceiver tasks: Keras' exporters, with what they
need for these models.

Keras' `Model.export` is used as it is, with three fixes:

- The input signature is the model's input dict with a free batch axis,
  given explicitly. Keras otherwise requires a model "called" through
  `__call__`, and JAX's `predict` never does so (ONNX on JAX refused).
- ONNX: an input named like an output (the multimodal autoencoder's
  "image", "audio", "label" in and out) makes tf2onnx fail ("graph input
  ... not exist") and gives torch an invalid graph ("Duplicate definition
  of name"); such inputs are exported as "<name>_input".
- OpenVINO on TensorFlow: OpenVINO's TensorFlow frontend makes every op
  without consumers an output, and each `ops.shape(x)[i]` on a tensor with
  a free batch axis leaves such ops (unused slices of the shape). Those
  extra scalar outputs are removed, so the IR has the model's outputs only.
- PyTorch (ONNX, OpenVINO): the torch parameter dict of a task is made
  before its layers are built, so it is empty and tracing fails ("Cannot
  insert a Tensor that requires grad as a constant"); it is rebuilt first.
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


def _export_torch_program(model, input_signature):
    """`torch.export` of the model on flat tensor arguments, every `None`
    axis dynamic (the batch axis shared by all inputs)."""
    import torch

    structure = input_signature[0] if len(input_signature) == 1 else (
        input_signature
    )
    specs = keras.tree.flatten(structure)

    class FlatInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            inputs = keras.tree.pack_sequence_as(structure, tensors)
            return tuple(keras.tree.flatten(self.model(inputs)))

    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = [
        {axis: batch if axis == 0 else torch.export.Dim(f"{s.name}_{axis}")
         for axis, size in enumerate(s.shape) if size is None}
        for s in specs
    ]
    # A batch of 2: a sample batch of 1 would be specialised as constant.
    samples = tuple(
        torch.ones(
            [2 if size is None else size for size in s.shape],
            dtype=getattr(torch, s.dtype),
        )
        for s in specs
    )
    names = [s.name for s in specs]
    return FlatInputs().eval(), samples, (tuple(dynamic_shapes),), names


def _export_onnx_torch(model, filepath, input_signature, opset_version=None):
    """ONNX through `torch.export` (dynamo) with dynamic axes. Keras takes
    the TorchScript exporter whenever an axis is dynamic, and that one
    cannot export `ops.layer_normalization` on a traced shape ("Failed to
    export a node ... because it is not constant")."""
    import torch

    module, samples, dynamic_shapes, names = _export_torch_program(
        model, input_signature
    )
    outputs = model._outputs_struct
    output_names = (
        sorted(outputs) if isinstance(outputs, dict) else None
    )  # keras.tree.flatten orders a dict by key
    program = torch.onnx.export(
        module, samples, dynamo=True, input_names=names,
        output_names=output_names, dynamic_shapes=dynamic_shapes,
        opset_version=opset_version, verbose=False,
    )
    program.save(str(filepath))


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
        if backend == "torch":
            # Torch tracers take the weights from the module's parameters;
            # this model's parameter dict was made before its layers had
            # weights (it is empty), so the tracer would meet the weights
            # as constants that require grad, and fail.
            self._track_variables()
        if format == "onnx":
            input_signature = _rename_inputs_named_like_outputs(
                self, input_signature
            )
        if format == "onnx" and backend == "torch":
            _export_onnx_torch(self, filepath, input_signature,
                               kwargs.get("opset_version"))
            if verbose is not False:
                print(f"Saved artifact at '{filepath}'.")
            return None
        result = super().export(filepath, format=format, verbose=verbose,
                                input_signature=input_signature, **kwargs)
        if format == "openvino" and backend in ("tensorflow", "jax"):
            _drop_dangling_openvino_outputs(
                str(filepath), len(keras.tree.flatten(self.outputs))
            )
        return result
