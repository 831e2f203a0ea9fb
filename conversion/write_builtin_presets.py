"""Writes the `keras_config` of every built-in Perceiver IO preset.

A built-in preset (`presets/perceiver_io/NAME.json`) keeps DeepMind's module
arguments (`deepmind_config`, what the converter reads) and the Keras task
those arguments build (`keras_config`), so `from_preset(NAME,
load_weights=False)` builds the architecture without going through a
converter. Run this once after changing a `deepmind_config` or the
converter's mapping of it, and commit the result:

    python conversion/write_builtin_presets.py
"""

import json
import sys
from pathlib import Path

import keras

from perceiver_keras.conversion.deepmind import kind_module
from perceiver_keras.models.presets import keras_config

PRESETS = Path(__file__).resolve().parents[1] / "presets" / "perceiver_io"
CONVERT = ("perceiver-keras convert {checkpoint} "
           "--model {name} --output {{output}}")


def main():
    for path in sorted(PRESETS.glob("*.json")):
        spec = json.loads(path.read_text(encoding="utf-8"))
        task = kind_module(spec["kind"]).build_task(spec["deepmind_config"])
        spec["keras_config"] = keras_config(task)
        spec["convert_command"] = CONVERT.format(**spec)
        path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        print(f"{path.name}: {task.count_params():,} parameters")
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
