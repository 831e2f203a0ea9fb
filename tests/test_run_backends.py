"""tests/run_backends.sh (what `make test` runs): progress shows while the
backends run, and each keeps its own log."""

import os
import select
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "run_backends.sh"

# Stands in for python: prints a line, then waits for `release` to appear.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "started $KERAS_BACKEND"
for i in $(seq 200); do [ -e release ] && break; sleep 0.1; done
echo "finished $KERAS_BACKEND"
[ "$KERAS_BACKEND" != jax ]
"""


def test_progress_shows_while_running_and_logs_are_kept(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    process = subprocess.Popen(
        [str(SCRIPT), str(fake), "tensorflow jax"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # One worker each: no xdist probe, which would run the fake too.
        env={**os.environ, "PARALLEL": "1", "WORKERS_tensorflow": "1",
             "WORKERS_jax": "1"},
    )
    seen, deadline = b"", time.monotonic() + 15
    while seen.count(b"started") < 2 and time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.5)[0]:
            seen += os.read(process.stdout.fileno(), 4096)
    (tmp_path / "release").touch()  # only now may the runs end
    rest, _ = process.communicate(timeout=30)
    assert b"[tensorflow] started tensorflow" in seen
    assert b"[jax] started jax" in seen
    assert process.returncode == 1  # the jax run failed
    logs = tmp_path / ".test-logs"
    assert (logs / "jax.log").read_text() == "started jax\nfinished jax\n"
    assert (logs / "tensorflow.log").read_text().startswith("started")
