"""What the converter command lines share (`conversion/convert_*.py`).

- `parse_arguments` (`add_arguments`, then `check_arguments`): `--output`,
  `--inputs`, `--save-outputs` and, for a converter with a reference
  implementation to run, `--compare` / `--no-compare`.
- `exits_on_errors`: a bad checkpoint, config or path is one line on
  stderr and exit status 1.
- `load_inputs` / `save_outputs`: `.npz` files, nested keys joined by `/`.
- `compare_with_reference`: runs the reference on the same inputs and
  prints max|diff| per output, when asked (`--compare`) or, by default,
  when the reference is installed and its estimated peak memory fits in
  what the machine has available; otherwise one line says why not.

A command line converts and writes the preset first, then runs the
converted model and writes its outputs, and only then compares: a
comparison that is skipped, fails or runs out of memory loses nothing.
"""

import argparse
import functools
import os
import pickle
import resource
import sys

import numpy as np

from perceiver_keras.layers.chunked_attention import recording_attention_calls

TOLERANCE = 2e-5
GIB = 2**30
# Left to everything else on the machine when deciding whether a reference
# run fits in the available memory.
RESERVE_BYTES = GIB


def add_arguments(parser, reference=None):
    """`--output`, `--inputs`, `--save-outputs`; `--compare` when the
    converter has a `reference` (its name) to run on the same inputs."""
    parser.add_argument("--output", required=True, metavar="PRESET_DIR",
                        help="preset directory to write (replaced if present)")
    parser.add_argument("--inputs", metavar="INPUTS_NPZ",
                        help="arrays to run the converted model on")
    parser.add_argument("--save-outputs", metavar="OUTPUTS_NPZ",
                        help="where to write the outputs for --inputs")
    if reference is not None:
        parser.add_argument(
            "--compare", action=argparse.BooleanOptionalAction, default=None,
            help=f"run {reference} on the same inputs and compare the "
            "outputs (default: when it is installed and its estimated peak "
            "memory fits in the memory available)",
        )


def check_arguments(parser, args):
    """Exits with status 2 on inconsistent arguments."""
    if (args.inputs is None) != (args.save_outputs is None):
        parser.error("--inputs and --save-outputs must be given together")


def parse_arguments(parser, argv, reference=None):
    """`argv` parsed by `parser` with the shared arguments added (see
    `add_arguments`) and checked (exits with status 2 if inconsistent)."""
    add_arguments(parser, reference)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


# What a bad checkpoint, config or path raises (UnsafeCheckpointError is an
# UnpicklingError: refused, not run).
CONVERSION_ERRORS = (OSError, ValueError, KeyError, pickle.UnpicklingError)


def exits_on_errors(main):
    """A converter's `main`, returning 1 with the error on stderr where it
    raises one of `CONVERSION_ERRORS`."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CONVERSION_ERRORS as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 1

    return guarded


def unflatten(arrays):
    """`{"inputs/image": a}` -> `{"inputs": {"image": a}}`."""
    nested = {}
    for key, value in arrays.items():
        *parents, leaf = key.split("/")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def load_inputs(path, nested=False):
    """The arrays of an `.npz` (with `nested`, keys `a/b` as `{a: {b:}}`)."""
    with np.load(path) as data:
        arrays = dict(data)
    return unflatten(arrays) if nested else arrays


def save_outputs(path, outputs):
    np.savez(path, **outputs)
    print(f"outputs {sorted(outputs)} -> {path}", flush=True)


def compare_outputs(outputs, expected, tolerance=TOLERANCE):
    """Prints max|diff| per output; True when all are within
    `tolerance * max(1, max|ref|)`."""
    ok = True
    for name in sorted(expected):
        ref = np.asarray(expected[name])
        diff = float(np.abs(np.asarray(outputs[name]) - ref).max(initial=0))
        bound = tolerance * max(1.0, float(np.abs(ref).max(initial=0)))
        verdict = "ok" if diff <= bound else "FAIL"
        ok = ok and diff <= bound
        print(f"  {name}: max|diff| = {diff:.3g} (bound {bound:.3g}) "
              f"{verdict}")
    return ok


# --- memory -----------------------------------------------------------------


def _status_bytes(field):
    """A `kB` field of /proc/self/status in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom():
    """`memory.max - memory.current` of this process's cgroup (v2), or
    None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            path = f.read().strip().split("::", 1)[-1]
        root = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(root, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(root, "memory.current")) as f:
            return int(limit) - int(f.read())
    except (OSError, ValueError):
        return None


def available_memory():
    """Bytes this process can still allocate, as far as the system says:
    MemAvailable, capped by a cgroup limit and by `ulimit -v`."""
    candidates = [_cgroup_headroom()]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _status_bytes("VmSize")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        candidates.append(soft - mapped)
    known = [c for c in candidates if c is not None]
    return max(0, min(known)) if known else None


def attention_peak_bytes(calls, weight_bytes=0):
    """Estimated peak of a framework that computes plain attention (the
    `[B, H, Q, K]` float32 scores and their softmax at once) for the
    `AttentionCall`s of one forward pass: the weights, plus the largest
    call's two score tensors and four `[B, K, C]` float32 activations (its
    input, normalised input, keys and values). Layers run one after
    another, so the largest call sets the peak."""
    largest = 0
    for call in calls:
        scores = call.score_bytes() or 0
        activations = 4 * 4 * (call.batch or 1) * (call.num_keys or 0) * (
            call.key_channels or 0)
        largest = max(largest, 2 * scores + activations)
    return weight_bytes + largest


class address_space_limit:
    """RLIMIT_AS = what the process maps now + `headroom` while inside: an
    allocation past it fails with an error instead of waking the
    out-of-memory killer (which kills the whole command, or a neighbour)."""

    def __init__(self, headroom):
        self.headroom = headroom

    def __enter__(self):
        self.previous = resource.getrlimit(resource.RLIMIT_AS)
        mapped = _status_bytes("VmSize")
        if self.headroom is not None and mapped is not None:
            limit = mapped + max(0, int(self.headroom))
            soft, hard = self.previous
            if soft != resource.RLIM_INFINITY:
                limit = min(limit, soft)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.previous)


def run_recording_sizes(run):
    """`(run(), calls)`: its result and the `AttentionCall`s it made."""
    with recording_attention_calls() as calls:
        result = run()
    return result, calls


def compare_with_reference(outputs, name, run_reference, needed_bytes,
                           compare=None, missing=None, what=""):
    """Compares `outputs` with `run_reference()`'s; returns the exit status.

    Args:
        outputs: the converted model's outputs (already written).
        name: the reference's name for messages ("transformers").
        run_reference: no arguments -> `{output name: array}`.
        needed_bytes: the reference's estimated peak memory (None: unknown).
        compare: True (`--compare`: run it even if the estimate says it will
            not fit), False (`--no-compare`), None (run it when it fits).
        missing: why the reference cannot run (not installed), or None.
        what: appended to the heading ("(example inputs)").

    Returns 0 when compared within tolerance or skipped, 1 when the outputs
    differ, or when an asked-for comparison cannot run or fails.
    """
    if compare is False:
        print(f"no comparison with {name} (--no-compare)")
        return 0
    if missing is not None:
        print(f"no comparison with {name}: {missing}")
        return 1 if compare else 0
    available = available_memory()
    if available is not None:
        available -= RESERVE_BYTES
    fits = needed_bytes is None or available is None or needed_bytes <= available
    estimate = ("" if needed_bytes is None or available is None else
                f"it needs about {needed_bytes / GIB:.1f} GiB, "
                f"{max(0, available) / GIB:.1f} GiB available")
    if not fits and not compare:
        print(f"comparison with {name} skipped: {estimate} (--compare runs "
              "it anyway)", flush=True)
        return 0
    if not fits:
        print(f"comparing with {name} although {estimate}", flush=True)
    try:
        # Past the available memory an allocation fails here instead.
        with address_space_limit(None if compare else available):
            expected = run_reference()
    except (MemoryError, RuntimeError, OSError, ValueError) as e:
        print(f"comparison with {name} failed ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); the preset and "
              "outputs were written before it", flush=True)
        return 1 if compare else 0
    print(f"against {name}" + (f" {what}" if what else "") + ":")
    return 0 if compare_outputs(outputs, expected) else 1
