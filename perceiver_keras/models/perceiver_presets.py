"""Built-in presets: DeepMind's six released Perceiver IO models.

Each built-in name has a JSON file in the repository's top-level `presets/`
directory (installed under `<prefix>/share/perceiver_keras/presets`) holding
the model kind, the `deepmind_config` DeepMind's colabs build it with, and
metadata: description, `params` (trainable parameters, as DeepMind counts
them: the conv model's 128 BatchNorm moving statistics are not included),
reported results, the official checkpoint URL, and the CC BY 4.0
attribution the parameters are released under.

DeepMind publishes the parameters as Haiku pickles, not as Keras presets,
so `from_preset(NAME)` on a `PerceiverTask` or `PerceiverBackbone` works as
follows (keras-hub's own built-in mechanism expects Kaggle handles, so
these names are not registered there):

1. a locally converted copy in `$PERCEIVER_KERAS_HOME/NAME` (default
   `~/.cache/perceiver_keras/NAME`) is loaded like any preset directory;
2. otherwise, with `load_weights=False`, the architecture is built offline
   from the JSON with random weights;
3. otherwise a `ValueError` gives the download URL and the
   `conversion/convert_deepmind.py` command that creates the local copy.

A transformers checkpoint (`hf://deepmind/...`, or a `save_pretrained`
directory) is converted on the fly by `perceiver_keras.conversion.hf`. Any
other preset string follows keras-hub's usual path.
"""

import functools
import json
import os
import sys
from pathlib import Path

from keras_hub.models import Backbone
from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE
from keras_hub.src.utils.preset_utils import check_config_class
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json

PRESET_NAMES = (
    "perceiver_io_imagenet_learned",
    "perceiver_io_imagenet_fourier",
    "perceiver_io_imagenet_conv",
    "perceiver_io_language_bytes",
    "perceiver_io_optical_flow",
    "perceiver_io_multimodal_kinetics700",
)

# Editable installs and source checkouts: `presets/` beside the package.
# Wheels: data-files installed under `sys.prefix`.
_SEARCH_PATH = (
    Path(__file__).resolve().parents[2] / "presets",
    Path(sys.prefix) / "share" / "perceiver_keras" / "presets",
)


def is_builtin(preset):
    return isinstance(preset, str) and preset in PRESET_NAMES


@functools.lru_cache(maxsize=None)
def builtin_preset(name):
    """The JSON of a built-in preset: kind, deepmind_config and metadata."""
    if not is_builtin(name):
        raise ValueError(
            f"`name` must be one of {list(PRESET_NAMES)}. Received: {name!r}."
        )
    for directory in _SEARCH_PATH:
        path = directory / f"{name}.json"
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    raise FileNotFoundError(
        f"Preset file {name}.json not found in any of "
        f"{[str(d) for d in _SEARCH_PATH]}; the installation is incomplete."
    )


def local_preset_dir(name):
    """Where a converted copy of a built-in preset is looked for."""
    home = os.environ.get("PERCEIVER_KERAS_HOME") or os.path.join(
        "~", ".cache", "perceiver_keras"
    )
    return Path(home).expanduser() / name


def _missing_weights_message(name):
    spec = builtin_preset(name)
    local = local_preset_dir(name)
    return (
        f"No converted weights for the built-in preset {name!r} at {local} "
        "(set PERCEIVER_KERAS_HOME to look elsewhere). DeepMind releases "
        "them as a Haiku checkpoint; convert it once:\n"
        f"  1. download {spec['checkpoint_url']}\n"
        f"  2. python conversion/convert_deepmind.py {spec['checkpoint']} "
        f"--model {name} --output {local}\n"
        "Or pass load_weights=False to build the architecture with random "
        f"weights. License: {spec['license']}. {spec['attribution']}"
    )


def _build_offline(cls, name, kwargs):
    """Builds the model of a built-in preset, randomly initialised."""
    from perceiver_keras.conversion.deepmind import kind_module

    spec = builtin_preset(name)
    task = kind_module(spec["kind"]).build_task(spec["deepmind_config"])
    model = task.backbone if issubclass(cls, Backbone) else task
    if not isinstance(model, cls):
        raise ValueError(
            f"Preset {name!r} is a {type(model).__name__}; it cannot be "
            f"loaded as a {cls.__name__}."
        )
    if kwargs:  # e.g. `num_classes`: rebuild with the constructor overrides
        model = type(model).from_config({**model.get_config(), **kwargs})
    return model


def saved_task_class(cls, preset):
    """The task class a preset directory records, when `cls` is a base.

    keras-hub picks a subclass by backbone class, which cannot tell the
    Perceiver tasks apart (all use `PerceiverBackbone`); `task.json` can.
    """
    if cls.backbone_cls is not None or not check_file_exists(
        preset, TASK_CONFIG_FILE
    ):
        return cls
    saved = check_config_class(load_json(preset, TASK_CONFIG_FILE))
    return saved if issubclass(saved, cls) else cls


def from_preset(cls, preset, load_weights, kwargs, load_preset):
    """`cls.from_preset` with built-in names; `load_preset(path)` otherwise.

    `load_preset` is keras-hub's `from_preset` bound to `cls`, the
    `load_weights` and `kwargs`.
    """
    from perceiver_keras.conversion import hf

    if hf.is_transformers_source(preset):
        return hf.load_transformers_preset(cls, preset, load_weights, **kwargs)
    if not is_builtin(preset):
        return hf.with_transformers_config(load_preset(preset), preset)
    local = local_preset_dir(preset)
    if (local / "config.json").is_file():
        return load_preset(str(local))
    if load_weights:
        raise ValueError(_missing_weights_message(preset))
    return _build_offline(cls, preset, kwargs)
