"""Built-in Perceiver IO presets from DeepMind's released files, in one call.

`PerceiverImageClassifier.from_preset("perceiver_io_imagenet_conv")` with
no converted copy in `$PERCEIVER_KERAS_HOME` lands here (registered with
`presets.register_weights_fetcher`): the preset definition's
`checkpoint_url` is downloaded (progress on stderr), its SHA-256 checked
against `checkpoint_sha256` when the definition records one, the file
converted once with `convert_deepmind` and the preset written to
`$PERCEIVER_KERAS_HOME/NAME`; later calls load that directory. The
downloaded checkpoint is deleted after conversion.

A failed download or conversion leaves nothing in the cache. With
`PERCEIVER_KERAS_OFFLINE=1`, or when the server cannot be reached, the
ValueError names the URL and the manual `perceiver-keras convert` command.
"""

import sys
import tempfile
from pathlib import Path

from perceiver_keras.models import presets
from perceiver_keras.utils.download import DownloadError
from perceiver_keras.utils.download import ServerUnreachable
from perceiver_keras.utils.download import download
from perceiver_keras.utils.download import offline


def fetch_deepmind_preset(name, local_dir):
    """Downloads and converts built-in preset `name` into `local_dir`.

    Returns False for presets that are not DeepMind checkpoints (no
    `deepmind_config`), True once `local_dir` holds the converted preset.
    """
    spec = presets.builtin_preset(name)
    if "deepmind_config" not in spec or not spec.get("checkpoint_url"):
        return False
    if offline():
        raise ValueError(presets.missing_weights_message(name) + (
            "\n(PERCEIVER_KERAS_OFFLINE is set, so nothing was downloaded.)"))
    from perceiver_keras.conversion.deepmind import convert_deepmind

    local_dir = Path(local_dir)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    expected = spec.get("checkpoint_sha256")
    # The raw file lives in a temporary folder beside the cache entry, so a
    # failure anywhere leaves no trace under the preset's name.
    with tempfile.TemporaryDirectory(dir=local_dir.parent,
                                     prefix=f".{name}.download.") as tmp:
        checkpoint = Path(tmp) / spec.get("checkpoint", "checkpoint.pickle")
        print(f"downloading {spec['checkpoint_url']}", file=sys.stderr)
        try:
            actual = download(spec["checkpoint_url"], checkpoint, expected)
        except ServerUnreachable as e:
            raise ValueError(
                f"{e}\n{presets.missing_weights_message(name)}") from e
        except DownloadError as e:
            raise DownloadError(
                f"{e}\nNothing was written to {local_dir}.") from e
        if expected is None:
            print(f"note: no published SHA-256 for {name}; the file "
                  f"downloaded has SHA-256 {actual} (not checked)",
                  file=sys.stderr)
        print(f"converting {checkpoint.name} -> {local_dir}", file=sys.stderr)
        convert_deepmind(checkpoint, spec, local_dir)
    return True


presets.register_weights_fetcher(fetch_deepmind_preset)
