"""`perceiver-keras info [PRESET]`: what a preset is, without its weights.

Builds the architecture only (`load_weights=False`): a built-in name needs
no download. Prints the task and backbone classes with the backbone's
settings, the parameter count, the input and output shapes, and where the
weights come from and under which licence.
"""

import json
from pathlib import Path

SKIPPED_SETTINGS = ("name", "trainable", "dtype")


def load_architecture(preset):
    """`(model, built-in spec or None)` for a built-in name or directory."""
    from keras_hub.models import Backbone
    from keras_hub.src.utils.preset_utils import check_config_class
    from keras_hub.src.utils.preset_utils import load_json

    from perceiver_keras.models import presets
    from perceiver_keras.models.perceiver_task import PerceiverTask

    if presets.is_builtin(preset):
        spec = presets.builtin_preset(preset)
        return PerceiverTask.from_preset(preset, load_weights=False), spec
    directory = Path(preset)
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"`PRESET` must be a built-in name (one of "
            f"{presets.builtin_names()}) or a preset directory with a "
            f"config.json. Received: {preset!r}.")
    cls = Backbone
    if (directory / "task.json").is_file():
        cls = check_config_class(load_json(str(directory), "task.json"))
    else:
        cls = check_config_class(load_json(str(directory), "config.json"))
    return cls.from_preset(str(directory), load_weights=False), None


def _shapes(tensors):
    import keras

    return keras.tree.map_structure(lambda t: tuple(t.shape), tensors)


def _settings(backbone):
    """The backbone's scalar settings, and its input adapter's class."""
    config = backbone.get_config()
    settings = {}
    for key, value in config.items():
        if key in SKIPPED_SETTINGS:
            continue
        if isinstance(value, dict) and "class_name" in value:
            settings[key] = value["class_name"]
        elif isinstance(value, (int, float, str, bool, list, tuple)) or (
                value is None):
            settings[key] = value
    return settings


def describe(preset):
    """The facts `info` prints, as a dict (also what `--json` would give)."""
    model, spec = load_architecture(preset)
    backbone = getattr(model, "backbone", model)
    facts = {
        "preset": preset,
        "task": type(model).__name__,
        "backbone": type(backbone).__name__,
        "parameters": int(model.count_params()),
        "backbone_settings": _settings(backbone),
        # Functional models know their shapes; subclassed ones say None.
        "inputs": _shapes(model.input) if getattr(model, "inputs", None)
        else None,
        "outputs": _shapes(model.output) if getattr(model, "outputs", None)
        else None,
    }
    if spec is not None:
        facts.update(
            description=spec.get("description"),
            source=spec.get("checkpoint_url"),
            checkpoint_sha256=spec.get("checkpoint_sha256"),
            license=spec.get("license"),
            attribution=spec.get("attribution"),
        )
        from perceiver_keras.models.presets import local_preset_dir

        local = local_preset_dir(preset)
        facts["converted_copy"] = str(local) if (
            local / "config.json").is_file() else None
    else:
        transformers_config = Path(preset) / "transformers_config.json"
        if transformers_config.is_file():
            config = json.loads(transformers_config.read_text())
            facts["source"] = ("transformers " + ", ".join(
                config.get("architectures") or ["checkpoint"]) + (
                f" ({config['_name_or_path']})"
                if config.get("_name_or_path") else ""))
        else:
            facts["source"] = "a preset directory (no source recorded)"
        facts["license"] = ("not recorded in the preset: see where its "
                            "weights came from")
    return facts


def run(args):
    if args.preset is None:
        from perceiver_keras.models.presets import builtin_names
        from perceiver_keras.models.presets import builtin_preset

        for name in builtin_names():
            spec = builtin_preset(name)
            print(f"{name:40s} {spec.get('kind', ''):14s} "
                  f"{spec.get('params', 0):>12,} parameters  "
                  f"{spec.get('license', '')}")
        return 0
    facts = describe(args.preset)
    width = max(map(len, facts))
    for key, value in facts.items():
        if key == "backbone_settings":
            print(f"{key:{width}s}:")
            for name, setting in value.items():
                print(f"  {name}: {setting}")
        elif isinstance(value, int) and not isinstance(value, bool):
            print(f"{key:{width}s}: {value:,}")
        else:
            print(f"{key:{width}s}: {value}")
    return 0
