"""Built-in presets and preset routing, shared by every model family.

A built-in preset is a JSON file `presets/<family>/<name>.json` in the
repository (installed under `<prefix>/share/perceiver_keras/presets`). It
holds `keras_config` (the task, serialized by Keras: building the
architecture needs no converter), the source checkpoint's own description
(DeepMind's `deepmind_config`, which the converters read) and metadata:
description, `params`, reported results, the checkpoint URL, and the licence
and attribution its weights are released under. Every JSON file found there
is a built-in name; adding a family's presets is adding its folder.

Released weights are not Keras presets, so `from_preset(NAME)` resolves a
built-in name as follows (keras-hub's own built-in mechanism expects Kaggle
handles, so these names are not registered there):

1. a locally converted copy in `$PERCEIVER_KERAS_HOME/NAME` (default
   `~/.cache/perceiver_keras/NAME`) is loaded like any preset directory;
2. otherwise, with `load_weights=False`, the architecture is built offline
   from `keras_config` with random weights;
3. otherwise a registered weights fetcher (`register_weights_fetcher`;
   the DeepMind converter registers one that downloads the released file,
   checks its SHA-256 and converts it once) creates the local copy;
4. failing that (offline, no fetcher for the family), a `ValueError` gives
   the download URL and the conversion command that creates it.

`$PERCEIVER_KERAS_PRESET_PATH` (directories, `os.pathsep`-separated) adds
preset JSON folders searched before the built-in ones (own definitions,
tests).

Other sources (a transformers `hf://` name or `save_pretrained` directory)
are handled by routes that the converters register with
`register_preset_route`; this module imports no converter. Any other preset
string follows keras-hub's usual path.
"""

import copy
import functools
import json
import os
import sys
from pathlib import Path

import keras
from keras_hub.models import Backbone
from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE
from keras_hub.src.utils.preset_utils import check_config_class
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json

# Editable installs and source checkouts: `presets/` beside the package.
# Wheels: data-files installed under `sys.prefix`.
_SEARCH_PATH = (
    Path(__file__).resolve().parents[2] / "presets",
    Path(sys.prefix) / "share" / "perceiver_keras" / "presets",
)


def _search_path():
    extra = os.environ.get("PERCEIVER_KERAS_PRESET_PATH", "")
    return tuple(Path(p) for p in extra.split(os.pathsep) if p) + _SEARCH_PATH


def _builtin_files():
    """`{name: path}` of every built-in preset JSON (first found wins)."""
    return _files_in(_search_path())


@functools.lru_cache(maxsize=None)
def _files_in(search_path):
    files = {}
    for directory in reversed(search_path):
        for path in sorted(directory.glob("*/*.json")):
            files[path.stem] = path
    return files


def builtin_names(family=None):
    """Built-in preset names, of one family (`presets/<family>/`) or all."""
    return sorted(
        name for name, path in _builtin_files().items()
        if family is None or path.parent.name == family
    )


def is_builtin(preset):
    return isinstance(preset, str) and preset in _builtin_files()


def builtin_preset(name):
    """The JSON of a built-in preset: `keras_config`, source config, metadata."""
    if not is_builtin(name):
        raise ValueError(
            f"`name` must be one of {builtin_names()}. Received: {name!r}."
        )
    return _read_preset(_builtin_files()[name])


@functools.lru_cache(maxsize=None)
def _read_preset(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def local_preset_dir(name):
    """Where a converted copy of a built-in preset is looked for."""
    home = os.environ.get("PERCEIVER_KERAS_HOME") or os.path.join(
        "~", ".cache", "perceiver_keras"
    )
    return Path(home).expanduser() / name


def missing_weights_message(name):
    spec = builtin_preset(name)
    local = local_preset_dir(name)
    return (
        f"No converted weights for the built-in preset {name!r} at {local} "
        "(set PERCEIVER_KERAS_HOME to look elsewhere). Convert the released "
        "checkpoint once:\n"
        f"  1. download {spec['checkpoint_url']}\n"
        f"  2. {spec['convert_command'].format(output=local)}\n"
        "Or pass load_weights=False to build the architecture with random "
        f"weights. License: {spec['license']}. {spec['attribution']}"
    )


def keras_config(task):
    """A task's `keras_config` for a built-in preset: its Keras
    serialization as plain JSON, without compile state (tasks compile with
    their defaults when built)."""
    config = keras.saving.serialize_keras_object(task)
    config.pop("compile_config", None)
    return json.loads(json.dumps(config))


def _build_offline(cls, name, kwargs):
    """Builds the model of a built-in preset, randomly initialised, once:
    constructor overrides (`kwargs`) go into the config before it is built,
    and only the backbone is built when the task is not the preset's."""
    # A copy: deserializing replaces nested configs with objects in place.
    task_config = copy.deepcopy(builtin_preset(name)["keras_config"])
    backbone_config = task_config["config"]["backbone"]
    task_cls = keras.saving.get_registered_object(
        task_config["registered_name"])
    backbone_cls = keras.saving.get_registered_object(
        backbone_config["registered_name"])

    if issubclass(cls, Backbone):
        if not issubclass(backbone_cls, cls):
            raise ValueError(
                f"Preset {name!r} has a {backbone_cls.__name__}; it cannot be "
                f"loaded as a {cls.__name__}."
            )
        backbone_config["config"].update(kwargs)
        return keras.saving.deserialize_keras_object(backbone_config)
    if issubclass(task_cls, cls):
        task_config["config"].update(kwargs)
        return keras.saving.deserialize_keras_object(task_config)
    if cls.backbone_cls is not None and issubclass(backbone_cls,
                                                   cls.backbone_cls):
        # Another task on this preset's backbone (e.g. a text classifier on
        # the masked LM's encoder), as keras-hub builds it from a directory.
        if cls.preprocessor_cls is not None and "preprocessor" not in kwargs:
            kwargs = {**kwargs, "preprocessor": cls.preprocessor_cls()}
        backbone = keras.saving.deserialize_keras_object(backbone_config)
        return cls(backbone=backbone, **kwargs)
    raise ValueError(
        f"Preset {name!r} is a {task_cls.__name__}; it cannot be loaded as a "
        f"{cls.__name__}."
    )


def saved_task_class(cls, preset):
    """The task class a preset directory records, when `cls` is a base.

    keras-hub picks a subclass by backbone class, which cannot tell tasks
    that share a backbone class apart; `task.json` can.
    """
    if cls.backbone_cls is not None or not check_file_exists(
        preset, TASK_CONFIG_FILE
    ):
        return cls
    saved = check_config_class(load_json(preset, TASK_CONFIG_FILE))
    return saved if issubclass(saved, cls) else cls


# Routes for preset strings that are not Keras presets: `(matches, load)`
# pairs, `matches(preset) -> bool`, `load(cls, preset, load_weights, **kw)`.
_ROUTES = []
# `hook(model, preset_dir) -> model`, run after a preset directory loads
# (e.g. re-attaching a converter's side files).
_AFTER_LOAD = []


def register_preset_route(matches, load):
    """Lets `from_preset` hand preset strings that `matches` to `load`."""
    _ROUTES.append((matches, load))


def register_after_load(hook):
    _AFTER_LOAD.append(hook)


# `fetch(name, local_dir) -> bool`: writes the converted preset of a
# built-in name to `local_dir` (True), or leaves it to others (False).
_WEIGHTS_FETCHERS = []


def register_weights_fetcher(fetch):
    """Lets `from_preset(NAME)` create a missing local copy of a built-in
    preset (download and convert) instead of refusing."""
    _WEIGHTS_FETCHERS.append(fetch)


def _load_directory(load_preset, preset):
    model = load_preset(preset)
    for hook in _AFTER_LOAD:
        model = hook(model, preset)
    return model


def from_preset(cls, preset, load_weights, kwargs, load_preset):
    """`cls.from_preset` with built-in names and registered routes;
    `load_preset(path)` (keras-hub's `from_preset` bound to `cls`, the
    `load_weights` and `kwargs`) otherwise."""
    for matches, load in _ROUTES:
        if matches(preset):
            return load(cls, preset, load_weights, **kwargs)
    if not is_builtin(preset):
        return _load_directory(load_preset, preset)
    local = local_preset_dir(preset)
    if (local / "config.json").is_file():
        return _load_directory(load_preset, str(local))
    if load_weights:
        for fetch in _WEIGHTS_FETCHERS:
            if fetch(preset, local):
                return _load_directory(load_preset, str(local))
        raise ValueError(missing_weights_message(preset))
    return _build_offline(cls, preset, kwargs)
