"""Downloads a file once, checked, without leaving partial files behind.

`download(url, path, sha256)` streams `url` into a temporary file beside
`path`, hashing as it goes, and renames it to `path` only when the transfer
is complete (as long as the server announced) and the SHA-256 matches.
Anything else (a dropped connection, a short body, a wrong checksum, Ctrl-C)
deletes the temporary file and raises `DownloadError`, so `path` either
holds the whole checked file or does not exist.

No Keras or backend import: the command line uses this before any model is
built.
"""

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHUNK_BYTES = 1 << 20
MIB = 1 << 20


class DownloadError(OSError):
    """A download that did not produce the complete, checked file."""


class ServerUnreachable(DownloadError):
    """No answer, or an HTTP error, before any byte arrived (offline, wrong
    URL): the caller can offer the manual route."""


def offline():
    """Whether `PERCEIVER_KERAS_OFFLINE` asks for no network access."""
    value = os.environ.get("PERCEIVER_KERAS_OFFLINE", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Progress:
    """One status line on stderr: `name  12.0/48.0 MiB  25%  3.1 MiB/s`.

    On a terminal the line is redrawn in place; otherwise (logs, CI) it is
    printed at most every 10% so a log stays short.
    """

    def __init__(self, name, total, stream=None):
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.shown = -1

    def update(self, done, final=False):
        fraction = done / self.total if self.total else None
        step = int(fraction * 10) if fraction is not None else done // (
            64 * MIB)
        if not (self.tty or final or step > self.shown):
            return
        self.shown = step
        rate = done / max(time.monotonic() - self.start, 1e-6) / MIB
        size = (f"{done / MIB:.1f}/{self.total / MIB:.1f} MiB "
                f"{100 * fraction:3.0f}%" if fraction is not None
                else f"{done / MIB:.1f} MiB")
        end = "\n" if final or not self.tty else ""
        self.stream.write(f"\r{self.name}  {size}  {rate:.1f} MiB/s{end}")
        self.stream.flush()


def download(url, path, sha256=None, progress=True, timeout=60):
    """Downloads `url` to `path` atomically; returns the file's SHA-256.

    Args:
        url: http(s) or file URL.
        path: destination file; its folder is created. It appears only once
            the file is complete and checked.
        sha256: expected hex digest, or None to accept any content (the
            digest is still returned, to be reported).
        progress: show a progress line on stderr.
        timeout: seconds without data before giving up.

    Raises:
        DownloadError: the server could not be reached or answered with an
            error, the transfer ended early, or the checksum differs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, partial = tempfile.mkstemp(dir=path.parent,
                                   prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                reason = (f"HTTP {e.code} {e.reason}"
                          if isinstance(e, urllib.error.HTTPError)
                          else getattr(e, "reason", e))
                raise ServerUnreachable(
                    f"Could not download {url}: {reason}") from e
            with response:
                total = response.headers.get("Content-Length")
                total = int(total) if total is not None else None
                bar = Progress(path.name, total) if progress else None
                done = 0
                try:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if bar:
                            bar.update(done)
                except (http.client.IncompleteRead, OSError) as e:
                    raise DownloadError(
                        f"Download of {url} was interrupted after {done:,} "
                        f"bytes ({type(e).__name__}: {e}); nothing was "
                        "kept. Run the command again to retry.") from e
                if bar:
                    bar.update(done, final=True)
            if total is not None and done != total:
                raise DownloadError(
                    f"Download of {url} was interrupted: received {done:,} "
                    f"of {total:,} bytes; nothing was kept. Run the command "
                    "again to retry.")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(
                f"SHA-256 mismatch for {url}: expected {sha256}, got "
                f"{actual}. The file was deleted; it may be corrupt or "
                "changed on the server.")
        os.replace(partial, path)
        return actual
    except BaseException:
        # Includes KeyboardInterrupt: an interrupted run leaves no file.
        if os.path.exists(partial):
            os.remove(partial)
        raise
