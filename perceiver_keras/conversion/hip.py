"""DeepMind's HiP parameter tree -> `HiPBackbone`, as a table.

Source: google-deepmind/hierarchical_perceiver (`HiP`,
`HiPClassBottleneck`, `PerceiverIO`), module name `perceiver`. The
parameters come as a `params.npz` (key = Haiku module path + `/` +
parameter name) or a Haiku pickle (read by the allow-list unpickler:
nothing in the file runs). Haiku names repeated modules `name`, `name_1`,
...: the position-encoding projection is one per modality
(`position_encoding_linear`, `position_encoding_linear_1`, ...), label
modalities get `embedder_<k>` / `position_encoder_<k>`, and
`HiPClassBottleneck` calls its blocks `perceiver_block_<i>` and its main head
`reconstruction_head_1` (`reconstruction_head` reads the labels).
"""

import json
import os

import numpy as np

from perceiver_keras.conversion.common import BlockNaming
from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.common import layer_norm_rows
from perceiver_keras.conversion.common import save_preset_atomically

KINDS = ("HiP", "HiPClassBottleneck", "PerceiverIO")
ROOT = "perceiver"


def read_hip_config(config):
    """`(kind, backbone_kwargs)` from a dict or JSON file in fixture format:
    `kind`, `constructor_kwargs` (DeepMind's), `input_order`,
    `input_shapes` (`[B, index, channels]` per modality)."""
    if isinstance(config, (str, os.PathLike)):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, dict) or not {
        "kind", "constructor_kwargs", "input_shapes"
    } <= set(config):
        raise ValueError(
            "`config` must be a dict (or JSON file) with keys 'kind', "
            "'constructor_kwargs', 'input_shapes' (and optionally "
            f"'input_order'). Received: {config!r:.200}"
        )
    kind = config["kind"]
    if kind not in KINDS:
        raise ValueError(
            f"`kind` must be one of {list(KINDS)}. Received: kind={kind!r}."
        )
    kwargs = dict(config["constructor_kwargs"])
    # Stored by DeepMind's classes but never used by their layers.
    kwargs.pop("activation_name", None)
    kwargs.pop("name", None)
    if kind == "PerceiverIO":
        for old, new in (("z_index_dim_train", "processor_index_dim_train"),
                         ("z_index_dim_eval", "processor_index_dim_eval")):
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
    shapes = config["input_shapes"]
    order = config.get("input_order") or list(shapes)
    if sorted(order) != sorted(shapes):
        raise ValueError(
            f"`input_order` {order} must name the `input_shapes` "
            f"{sorted(shapes)}."
        )
    kwargs["modalities"] = [[n, shapes[n][1], shapes[n][2]] for n in order]
    return kind, kwargs


def build_backbone(kind, kwargs):
    from perceiver_keras.models.hip.hip_backbone import HiPBackbone

    return HiPBackbone(**kwargs)


_HIP_ATTENTION = {
    "query": "attention/query_linear", "key": "attention/key_linear",
    "value": "attention/value_linear",
    "output": "attention/attention_output_linear",
    "mlp_hidden": "dense/mlp_hidden_linear",
    "mlp_output": "dense/mlp_output_linear",
}
# DeepMind's HiP attention modules.
HIP_BLOCKS = BlockNaming(
    cross_names={"query_norm": "layer_norm", "key_value_norm": "layer_norm_1",
                 "mlp_norm": "layer_norm_2", **_HIP_ATTENTION},
    self_names={"attention_norm": "layer_norm", "mlp_norm": "layer_norm_1",
                **_HIP_ATTENTION},
    dense_rows=dense_rows, norm_rows=layer_norm_rows, separator="/",
)
cross_attention_rows = self_attention_rows = HIP_BLOCKS.rows


def block_rows(prefix, block):
    cross = f"{prefix}/~/hi_p_cross_attention"
    rows = [(f"{cross}/query_inputs/pos_embs", block.latents, None)]
    if block.skip_projection is not None:
        rows += dense_rows(f"{cross}/pre_attention_residual_linear",
                           block.skip_projection)
    rows += cross_attention_rows(cross, block.cross_attention)
    for i, layer in enumerate(block.self_attentions):
        rows += self_attention_rows(f"{prefix}/~/self_attend_id_{i}", layer)
    return rows


def embedding_rows(embedder, encoder, name, embedding, projection_index):
    rows = [
        *dense_rows(f"{embedder}/~embed/embed_{name}", embedding.embed),
        (f"{encoder}/pos_emb_mae_{name}/pos_embs",
         embedding.position_encoding, None),
    ]
    if embedding.position_projection is not None:
        suffix = f"_{projection_index}" if projection_index else ""
        rows += dense_rows(f"{encoder}/position_encoding_linear{suffix}",
                           embedding.position_projection)
    return rows


def weight_rows(backbone, kind):
    """The table: `(haiku_name, keras_variable, None)` for every weight."""
    r = ROOT
    bottleneck = kind == "HiPClassBottleneck"
    rows = []
    for k, name in enumerate(backbone.input_modalities):
        rows += embedding_rows(f"{r}/embedder", f"{r}/position_encoder", name,
                               backbone.embeddings[name], k)
    for k, name in enumerate(backbone.label_embeddings, start=1):
        rows += embedding_rows(f"{r}/embedder_{k}", f"{r}/position_encoder_{k}",
                               name, backbone.label_embeddings[name], 0)
        rows += dense_rows(f"{r}/embedder_{k}/~unembed/unembed_{name}",
                           backbone.unembeddings[name])
    block_name = "perceiver_block" if bottleneck else "block"
    for i, block in enumerate(backbone.hip_blocks):
        rows += block_rows(f"{r}/{block_name}_{i}", block)
    head = "reconstruction_head"
    if bottleneck:
        rows += cross_attention_rows(f"{r}/{head}/hi_p_cross_attention",
                                     backbone.label_reconstruction_head)
        head = "reconstruction_head_1"
    rows += cross_attention_rows(f"{r}/{head}/hi_p_cross_attention",
                                 backbone.reconstruction_head)
    for name in backbone.input_modalities:
        rows += dense_rows(f"{r}/embedder/~unembed/unembed_{name}",
                           backbone.unembeddings[name])
    return rows


def load_parameters(path):
    """Flat `{haiku_path/name: array}` from a `.npz` or a Haiku pickle."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    from perceiver_keras.utils.deepmind_checkpoint import (
        load_deepmind_checkpoint,
    )

    params, _ = load_deepmind_checkpoint(path)
    return params


def convert_hip_backbone(params, config):
    """A `HiPBackbone` holding `params` (a dict, `.npz` or pickle path)."""
    kind, kwargs = read_hip_config(config)
    if not isinstance(params, dict):
        params = load_parameters(params)
    backbone = build_backbone(kind, kwargs)
    assign_weights(backbone, weight_rows(backbone, kind), params)
    return backbone


def task_for(backbone):
    """The task a converted backbone is saved as: a classifier when it has
    label modalities, else a masked auto-encoder."""
    from perceiver_keras.models.hip.hip_classifier import HiPClassifier
    from perceiver_keras.models.hip.hip_masked_autoencoder import (
        HiPMaskedAutoencoder,
    )

    if backbone.label_modalities:
        return HiPClassifier(backbone)
    return HiPMaskedAutoencoder(backbone)


def convert_hip(params_path, config, output_dir):
    """Converts DeepMind HiP parameters into a preset directory (written
    all at once); returns the task."""
    task = task_for(convert_hip_backbone(params_path, config))
    save_preset_atomically(task, output_dir)
    return task


def run_inputs(backbone, inputs):
    """The backbone's outputs on `inputs` (fixture layout), by fixture key:
    final outputs, every block's grouped output and the grouped
    intermediates."""
    outputs = dict(backbone.predict_on_batch(inputs))
    outputs.update(backbone.intermediate_outputs(inputs))
    return {k: np.asarray(v) for k, v in outputs.items()}


def export_parameters(backbone, kind="HiP"):
    """The backbone's weights as DeepMind's parameter tree (the table read
    backwards): `{haiku_path/name: array}`."""
    import keras

    return {
        name: keras.ops.convert_to_numpy(variable)
        for name, variable, _ in weight_rows(backbone, kind)
    }
