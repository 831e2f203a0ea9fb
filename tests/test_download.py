"""Built-in presets download, check and convert DeepMind's file on first use.

A local HTTP server (a thread of this process) serves a fixture checkpoint
in place of storage.googleapis.com; a test preset definition found through
`$PERCEIVER_KERAS_PRESET_PATH` points its `checkpoint_url` at it. No
network is used.
"""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close
from perceiver_keras.models.perceiver_io.perceiver_image_classifier import (
    PerceiverImageClassifier,
)
from perceiver_keras.utils.download import DownloadError
from perceiver_keras.utils.download import download

FIXTURE = Path(__file__).parent / "fixtures" / "deepmind" / "image_fourier-public"
CHECKPOINT = (FIXTURE / "checkpoint.pystate").read_bytes()
SHA256 = hashlib.sha256(CHECKPOINT).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """`/full`: the checkpoint; `/truncated`: announces all of it, sends
    half and closes; anything else: 404."""

    requests = []

    def do_GET(self):
        Handler.requests.append(self.path)
        if self.path not in ("/full", "/truncated"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(CHECKPOINT)))
        self.end_headers()
        body = CHECKPOINT if self.path == "/full" else CHECKPOINT[:len(
            CHECKPOINT) // 2]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def preset(tmp_path, monkeypatch):
    """`define(path, sha256) -> name`: a built-in preset whose checkpoint
    is at `path` on the server; the cache is an empty `tmp_path/home`."""
    home = tmp_path / "home"
    monkeypatch.setenv("PERCEIVER_KERAS_HOME", str(home))
    monkeypatch.setenv("PERCEIVER_KERAS_PRESET_PATH", str(tmp_path / "defs"))
    monkeypatch.delenv("PERCEIVER_KERAS_OFFLINE", raising=False)
    config = json.loads((FIXTURE / "config.json").read_text())

    def define(url, sha256=SHA256, name="tiny_fourier_test"):
        spec = {
            "name": name, "kind": config["kind"],
            "checkpoint": "checkpoint.pystate", "checkpoint_url": url,
            "checkpoint_sha256": sha256, "license": "CC-BY-4.0",
            "attribution": "test fixture",
            "convert_command": ("perceiver-keras convert checkpoint.pystate "
                                f"--model {name} --output {{output}}"),
            "deepmind_config": config["deepmind_config"],
        }
        folder = tmp_path / "defs" / "perceiver_io_test"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(spec))
        return name

    define.home = home
    Handler.requests.clear()
    return define


def leftovers(home):
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if (
        home.exists()) else []


def test_first_call_downloads_converts_and_caches(server, preset, capfd):
    name = preset(f"{server}/full")
    classifier = PerceiverImageClassifier.from_preset(name)
    assert Handler.requests == ["/full"]
    assert (preset.home / name / "config.json").is_file()
    # Only the converted preset stays: the raw download is gone.
    assert [p.name for p in preset.home.iterdir()] == [name]
    assert "tiny_fourier_test" in capfd.readouterr().err  # progress line

    with np.load(FIXTURE / "inputs.npz") as inputs:
        images = inputs["images"]
    with np.load(FIXTURE / "outputs.npz") as outputs:
        expected = outputs["logits"]
    assert_close(classifier(images), expected)

    again = PerceiverImageClassifier.from_preset(name)
    assert Handler.requests == ["/full"]  # the cache, not the server
    assert_close(again(images), expected)


def test_truncated_transfer_leaves_nothing(server, preset):
    name = preset(f"{server}/truncated")
    with pytest.raises(DownloadError, match="interrupted"):
        PerceiverImageClassifier.from_preset(name)
    assert leftovers(preset.home) == []


def test_wrong_checksum_leaves_nothing(server, preset):
    name = preset(f"{server}/full", sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256 mismatch") as error:
        PerceiverImageClassifier.from_preset(name)
    assert SHA256 in str(error.value)  # what arrived
    assert leftovers(preset.home) == []


def test_offline_mode_gives_the_manual_command(server, preset, monkeypatch):
    monkeypatch.setenv("PERCEIVER_KERAS_OFFLINE", "1")
    name = preset(f"{server}/full")
    with pytest.raises(ValueError, match="PERCEIVER_KERAS_OFFLINE") as error:
        PerceiverImageClassifier.from_preset(name)
    assert Handler.requests == []
    message = str(error.value)
    assert f"{server}/full" in message
    assert (f"perceiver-keras convert checkpoint.pystate --model {name} "
            f"--output {preset.home / name}") in message
    # The architecture alone still builds offline... from keras_config,
    # which this test definition lacks; built-in names have it.


def test_unreachable_server_gives_the_manual_command(server, preset):
    name = preset(f"{server}/no_such_file")
    with pytest.raises(ValueError, match="perceiver-keras convert") as error:
        PerceiverImageClassifier.from_preset(name)
    assert "404" in str(error.value)
    assert leftovers(preset.home) == []


def test_download_without_recorded_checksum_returns_it(server, tmp_path):
    path = tmp_path / "sub" / "file.bin"
    assert download(f"{server}/full", path, None, progress=False) == SHA256
    assert path.read_bytes() == CHECKPOINT
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_builtin_presets_record_url_and_checksum_field():
    from perceiver_keras.models.presets import builtin_names
    from perceiver_keras.models.presets import builtin_preset

    for name in builtin_names("perceiver_io"):
        spec = builtin_preset(name)
        assert spec["checkpoint_url"].startswith(
            "https://storage.googleapis.com/perceiver_io/")
        # DeepMind publishes no checksums: null means "not checked" (the
        # README lists them); a recorded one must be a SHA-256 hex digest.
        sha = spec["checkpoint_sha256"]
        assert sha is None or (len(sha) == 64 and int(sha, 16) >= 0)
        assert spec["convert_command"].startswith("perceiver-keras convert ")
