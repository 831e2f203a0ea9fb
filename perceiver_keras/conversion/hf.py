"""Hugging Face transformers Perceiver checkpoints as Keras tasks.

A transformers checkpoint is a `save_pretrained` directory, or a hub repo
named `hf://owner/name` (downloaded with `huggingface_hub`): `config.json`
(a `PerceiverConfig` whose `architectures` names the model class), the
weights (`model.safetensors`, sharded or not, or `pytorch_model.bin`, read
by the safe readers of `perceiver_keras.utils.hf_checkpoint`) and, for image
models, `preprocessor_config.json`.

Each transformers class maps to a module, so the registry is a table:

    build_task(architecture, config, processor_config, tensor_names) -> model
    weight_rows(model, architecture, config)
        -> [(checkpoint_name, variable, transform)]
    run_inputs(model, architecture, inputs) -> {output name: array}
    example_inputs(model, architecture) -> inputs
    new_task(cls, model, config, processor_config, kwargs) -> task of cls

`config` is the dict of `config.json`; `tensor_names` the names in the
weight file (empty when weights are not loaded). `inputs` are the keyword
arguments of the transformers class's `forward` as NumPy arrays, and the
outputs are named after the transformers output (`logits`,
`last_hidden_state`, or `logits/<modality>`).

Where transformers computes differently from DeepMind (docs/numerics.md), the
model is built with the option that reproduces transformers: exact-erf GELU
(`hidden_act="gelu"`), a query residual in every classification decoder,
the conv stem padded 3 with an unpadded max pool, no x20 flow scale. The
preprocessors are transformers': `[CLS] ... [SEP]` framing for text, the
`PerceiverImageProcessor` crop/resize/normalisation for images.

This module finds and reads checkpoints (local or downloaded), converts
them (`load_transformers`, `convert_transformers`) and holds
`load_transformers_preset`, the `from_preset` route. What the classes share
(encoder options, parameter names) is in `hf_common`; export is in
`hf_export`.
"""

import importlib
import json
import os

from perceiver_keras.conversion.common import assign_weights
from perceiver_keras.conversion.common import inference_mode
from perceiver_keras.conversion.common import save_preset_atomically
from perceiver_keras.models import presets
from perceiver_keras.utils.hf_checkpoint import WEIGHT_FILES
from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir

ARCHITECTURES = {
    "PerceiverModel": "perceiver_keras.conversion.hf_text",
    "PerceiverForMaskedLM": "perceiver_keras.conversion.hf_text",
    "PerceiverForSequenceClassification": "perceiver_keras.conversion.hf_text",
    "PerceiverForImageClassificationLearned":
        "perceiver_keras.conversion.hf_image",
    "PerceiverForImageClassificationFourier":
        "perceiver_keras.conversion.hf_image",
    "PerceiverForImageClassificationConvProcessing":
        "perceiver_keras.conversion.hf_image",
    "PerceiverForOpticalFlow": "perceiver_keras.conversion.hf_flow",
    "PerceiverForMultimodalAutoencoding":
        "perceiver_keras.conversion.hf_multimodal",
}

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
HF_PREFIX = "hf://"
# The files a conversion reads from a hub repo, weights in one format only
# (safetensors when the repo has it).
METADATA_FILES = (CONFIG_FILE, PROCESSOR_FILE)
WEIGHT_PATTERNS = (
    ("model*.safetensors", "model.safetensors.index.json"),
    ("pytorch_model*.bin", "pytorch_model.bin.index.json"),
)
# torch's BatchNorm counts its training steps; no model weight stands for it.
BOOKKEEPING_SUFFIXES = (".num_batches_tracked",)


def architecture_module(architecture):
    """The module that builds, maps and runs one transformers class."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"`architectures` must name one of {sorted(ARCHITECTURES)}. "
            f"Received: {architecture!r}."
        )
    return importlib.import_module(ARCHITECTURES[architecture])


# --- reading a checkpoint ----------------------------------------------------


def is_transformers_source(preset):
    """Whether `from_preset(preset)` should take the transformers route.

    True for local directories, and `hf://` repos, whose `config.json` is a
    `PerceiverConfig` (keras-hub's own presets, on disk or on the hub, have
    a Keras `config.json` and keep keras-hub's route). An `hf://` repo's
    `config.json` is downloaded to decide; an OSError says if it cannot be.
    """
    if not isinstance(preset, (str, os.PathLike)):
        return False
    preset = os.fspath(preset)
    if preset.startswith(HF_PREFIX):
        directory = local_source(preset, files=(CONFIG_FILE,))
    elif os.path.isdir(preset):
        directory = preset
    else:
        return False
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        return False
    config = _read_json(path)
    return isinstance(config, dict) and config.get("model_type") == "perceiver"


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def local_checkpoint(source, load_weights=True):
    """A local directory with `source`'s config and (if `load_weights`)
    weights; hub repos are downloaded (see `local_source`)."""
    directory = local_source(source, METADATA_FILES)
    if not load_weights or directory == os.fspath(source):
        return directory
    for patterns in WEIGHT_PATTERNS:
        directory = local_source(source, METADATA_FILES + patterns)
        if any(os.path.isfile(os.path.join(directory, name))
               for name in WEIGHT_FILES):
            break
    return directory


def local_source(source, files=METADATA_FILES):
    """A local directory holding `source`; hub repos are downloaded.

    `source` is a directory, `hf://owner/name[@revision]` or a bare hub id
    `owner/name` that is not a local path. Only `files` (glob patterns) are
    downloaded, into huggingface_hub's cache.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        return source
    repo = source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(
            "`source` must be a save_pretrained directory or a hub id "
            f"'owner/name' (optionally 'hf://owner/name'). Received: "
            f"{source!r}."
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(
            f"Loading {source!r} needs `huggingface_hub` to download it "
            "(pip install huggingface_hub), or a local save_pretrained "
            "directory."
        ) from None
    try:
        return snapshot_download(
            repo, revision=revision or None, allow_patterns=list(files)
        )
    except Exception as e:  # network, authentication, missing repo
        revision_option = f" --revision {revision}" if revision else ""
        raise OSError(
            f"Could not download {repo!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Without "
            f"network access, download it elsewhere with huggingface_hub's "
            f"command line (`hf download {repo}{revision_option} --local-dir "
            f"DIR`) and pass the local directory DIR instead."
        ) from e


def read_config(directory):
    """`(config, processor_config)`: `config.json` and the optional
    `preprocessor_config.json` of a `save_pretrained` directory."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}.")
    config = _read_json(path)
    if config.get("model_type") != "perceiver":
        raise ValueError(
            f"{path} must be a PerceiverConfig (model_type 'perceiver'). "
            f"Received: model_type={config.get('model_type')!r}."
        )
    processor_path = os.path.join(directory, PROCESSOR_FILE)
    processor = _read_json(processor_path) if os.path.isfile(
        processor_path) else None
    return config, processor


def architecture_of(config):
    """The transformers class `config.json` records (`PerceiverModel` if
    none)."""
    architectures = config.get("architectures") or ["PerceiverModel"]
    if len(architectures) != 1:
        raise ValueError(
            "`architectures` must name one model class. Received: "
            f"{architectures}."
        )
    architecture_module(architectures[0])  # validates the name
    return architectures[0]


def checkpoint_tensors(tensors):
    """The weight file's tensors without torch's training bookkeeping."""
    return {
        name: value for name, value in tensors.items()
        if not name.endswith(BOOKKEEPING_SUFFIXES)
    }


# --- building and converting ------------------------------------------------


def load_transformers(source, load_weights=True, dtype=None):
    """The Keras model (task, or backbone for `PerceiverModel`) of a
    transformers checkpoint, with its weights.

    Args:
        source: a `save_pretrained` directory, `hf://owner/name` or
            `owner/name`.
        load_weights: False builds the architecture with random weights
            (only `config.json` is read).
        dtype: optional dtype policy of the model (e.g. "bfloat16",
            "mixed_bfloat16"); the preprocessor keeps its own.

    Raises:
        ValueError: the configuration asks for something this converter
            does not reproduce, or the weights do not match the model (the
            message lists missing, unused and mismatched tensors).
    """
    directory = local_checkpoint(source, load_weights)
    config, processor_config = read_config(directory)
    architecture = architecture_of(config)
    module = architecture_module(architecture)
    tensors = {}
    if load_weights:
        # Read (and vet) the weights before building the model.
        tensors = checkpoint_tensors(load_checkpoint_dir(directory))
    model = module.build_task(
        architecture, config, processor_config, tuple(tensors)
    )
    if load_weights:
        rows = module.weight_rows(model, architecture, config)
        assign_weights(model, rows, tensors)
    if dtype is not None:
        model = _with_dtype(model, dtype)
    model.transformers_config = config
    model.processor_config = processor_config
    return model


def _with_dtype(model, dtype):
    """`model` rebuilt with the dtype policy `dtype` (backbone, its input
    adapter and the task's heads), holding the same weights."""
    from keras_hub.models import Backbone

    config = model.get_config()
    backbone = config if isinstance(model, Backbone) else (
        config["backbone"]["config"]
    )
    backbone["dtype"] = dtype
    backbone["input_adapter"]["config"]["dtype"] = dtype
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


class _WithTransformersConfig:
    """Saves a model's preset plus the transformers config it came from
    (`transformers_config.json`: labels, and what export needs)."""

    def __init__(self, model, config):
        self.model, self.config = model, config

    def save_to_preset(self, preset_dir):
        self.model.save_to_preset(preset_dir)
        path = os.path.join(preset_dir, "transformers_config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)


def with_transformers_config(model, preset):
    """Re-attaches the `transformers_config.json` a converted preset keeps
    (labels for export); other presets pass through unchanged."""
    path = os.path.join(os.fspath(preset), "transformers_config.json")
    if os.path.isfile(path):
        model.transformers_config = _read_json(path)
    return model


def convert_transformers(source, output_dir):
    """Converts a transformers checkpoint into a preset directory.

    The preset is written all at once (an error leaves nothing there).
    Returns the converted model.
    """
    model = load_transformers(source)
    save_preset_atomically(
        _WithTransformersConfig(model, model.transformers_config), output_dir
    )
    return model


def run_inputs(model, inputs):
    """Runs a converted model on transformers-style inputs (see module doc),
    without recording gradients."""
    architecture = architecture_of(model.transformers_config)
    with inference_mode():
        return architecture_module(architecture).run_inputs(
            model, architecture, inputs
        )


def example_inputs(model):
    """Inputs to try a converted model on, as transformers' forward
    arguments (real text through the preprocessor; random images)."""
    architecture = architecture_of(model.transformers_config)
    return architecture_module(architecture).example_inputs(
        model, architecture
    )


def load_transformers_preset(cls, preset, load_weights=True, **kwargs):
    """`cls.from_preset(preset)` for a transformers checkpoint.

    `cls` is `PerceiverBackbone` (the checkpoint's encoder), a task class
    the checkpoint's class converts to (`PerceiverTask` picks it from
    `architectures`), or `PerceiverTextClassifier` /
    `PerceiverImageClassifier` on another checkpoint of the same input kind,
    which keeps its encoder and adds a new, randomly initialised head (as
    transformers' `from_pretrained` does); pass `num_classes` then.
    `kwargs` override constructor arguments of the returned task.
    """
    from keras_hub.models import Backbone

    # keras-hub's `from_preset` applies `dtype` to the backbone, not as a
    # task constructor argument.
    model = load_transformers(preset, load_weights, kwargs.pop("dtype", None))
    config = model.transformers_config
    backbone = model if isinstance(model, Backbone) else model.backbone
    if issubclass(cls, Backbone):
        if not isinstance(backbone, cls) or kwargs:
            raise ValueError(
                f"{preset!r} holds a {type(backbone).__name__}; it cannot be "
                f"loaded as a {cls.__name__}"
                + (f" with arguments {sorted(kwargs)}." if kwargs else ".")
            )
        return backbone
    if isinstance(model, cls) and not kwargs:
        return model
    if isinstance(model, Backbone) and cls.backbone_cls is None:
        raise ValueError(
            f"{preset!r} holds a bare PerceiverModel (no head): load it with "
            "PerceiverBackbone.from_preset, or with a task class such as "
            f"PerceiverTextClassifier and its head arguments; not with "
            f"{cls.__name__}."
        )
    module = architecture_module(architecture_of(config))
    task = module.new_task(cls, model, config, model.processor_config, kwargs)
    task.transformers_config = config
    task.processor_config = model.processor_config
    return task


presets.register_preset_route(is_transformers_source, load_transformers_preset)
presets.register_after_load(with_transformers_config)
