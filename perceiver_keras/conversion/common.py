"""Shared machinery of the checkpoint converters.

A converter is a table: rows `(checkpoint_name, keras_variable, transform)`
where `transform` maps the checkpoint array to the variable's layout (None:
as is). `assign_weights` checks the table against the checkpoint both ways
before writing anything: every checkpoint tensor used, every model weight
assigned, every shape equal.
"""

import contextlib
import os
import shutil
import tempfile

import keras
import numpy as np


def cross_attention_rows(prefix, block):
    """Rows for a `PerceiverCrossAttentionBlock` in DeepMind's naming."""
    attention = block.attention
    return [
        *layer_norm_rows(f"{prefix}/layer_norm", block.query_norm),
        *layer_norm_rows(f"{prefix}/layer_norm_1", block.key_value_norm),
        *dense_rows(f"{prefix}/attention/linear", attention.query_dense),
        *dense_rows(f"{prefix}/attention/linear_1", attention.key_dense),
        *dense_rows(f"{prefix}/attention/linear_2", attention.value_dense),
        *dense_rows(f"{prefix}/attention/linear_3", attention.output_dense),
        *layer_norm_rows(f"{prefix}/layer_norm_2", block.mlp_norm),
        *dense_rows(f"{prefix}/mlp/linear", block.mlp.hidden_dense),
        *dense_rows(f"{prefix}/mlp/linear_1", block.mlp.output_dense),
    ]


def self_attention_rows(prefix, block):
    """Rows for a `PerceiverSelfAttentionBlock` in DeepMind's naming."""
    attention = block.attention
    return [
        *layer_norm_rows(f"{prefix}/layer_norm", block.attention_norm),
        *dense_rows(f"{prefix}/attention/linear", attention.query_dense),
        *dense_rows(f"{prefix}/attention/linear_1", attention.key_dense),
        *dense_rows(f"{prefix}/attention/linear_2", attention.value_dense),
        *dense_rows(f"{prefix}/attention/linear_3", attention.output_dense),
        *layer_norm_rows(f"{prefix}/layer_norm_1", block.mlp_norm),
        *dense_rows(f"{prefix}/mlp/linear", block.mlp.hidden_dense),
        *dense_rows(f"{prefix}/mlp/linear_1", block.mlp.output_dense),
    ]


def dense_rows(prefix, dense):
    """Haiku `Linear` (`w` [in, out], `b`) or `Conv2D` (`w` HWIO) -> Keras."""
    rows = [(f"{prefix}/w", dense.kernel, None)]
    if dense.use_bias:
        rows.append((f"{prefix}/b", dense.bias, None))
    return rows


def layer_norm_rows(prefix, norm):
    return [
        (f"{prefix}/scale", norm.gamma, None),
        (f"{prefix}/offset", norm.beta, None),
    ]


def assign_weights(model, rows, checkpoint):
    """Writes `checkpoint[name]` (transformed) into each row's variable.

    Raises ValueError listing unused checkpoint tensors, unassigned model
    weights and shape mismatches; nothing is written unless all agree.
    """
    assigned = {id(variable) for _, variable, _ in rows}
    unassigned = [v.path for v in model.weights if id(v) not in assigned]
    names = [name for name, _, _ in rows]
    missing = [name for name in names if name not in checkpoint]
    unused = sorted(set(checkpoint) - set(names))
    values, mismatched = [], []
    for name, variable, transform in rows:
        if name in missing:
            continue
        value = np.asarray(checkpoint[name])
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{name} {tuple(value.shape)} -> {variable.path} "
                f"{tuple(variable.shape)}"
            )
        values.append((variable, value))
    problems = [
        (missing, "named by the table but absent from the checkpoint"),
        (unused, "in the checkpoint but not used"),
        (unassigned, "model weights not assigned"),
        (mismatched, "shape mismatches"),
    ]
    report = [
        f"{len(items)} {what}:\n  " + "\n  ".join(items)
        for items, what in problems
        if items
    ]
    if report:
        raise ValueError("Checkpoint does not match the model.\n"
                         + "\n".join(report))
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))


def save_preset_atomically(task, preset_dir):
    """Saves `task` to `preset_dir`, all or nothing.

    The preset is written into a temporary sibling directory and renamed
    into place only once complete, so an error or interruption never leaves
    a half-written preset. An existing directory is replaced.
    """
    preset_dir = os.path.abspath(preset_dir)
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        task.save_to_preset(staging)
        if os.path.exists(preset_dir):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rename(preset_dir, os.path.join(old, "preset"))
            os.rename(staging, preset_dir)
            shutil.rmtree(old)
        else:
            os.rename(staging, preset_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def inference_mode():
    """A context for running a converted model on inputs, gradients off.

    Eager torch records every op of a call for backpropagation unless told
    not to; in the chunked cross-attention that keeps each chunk's
    `[B, H, Q, chunk]` scores alive until the call ends, i.e. the whole
    `[B, H, Q, M]` tensor the streaming path exists to avoid. TensorFlow and
    JAX record nothing outside a GradientTape / `jax.grad`.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
