"""Safe reader for DeepMind's Perceiver IO checkpoint pickles.

The released checkpoints (``imagenet_*.pystate``,
``language_perceiver_io_bytes.pickle``, ``optical_flow_checkpoint.pystate``,
``video_autoencoding_checkpoint.pystate``) are pickles of Haiku
``FlatMapping`` objects holding numpy arrays. A plain ``pickle.load`` would
need Haiku installed and would run any code a tampered file asks for, so this
module reads them with an unpickler that only knows the handful of objects
these files are made of, and needs neither Haiku nor JAX.
"""

import errno
import os
import pickle

import numpy as np

__all__ = ["UnsafeCheckpointError", "load_deepmind_checkpoint"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked for an object outside the allow-list."""


# numpy's own pickle helpers, taken from numpy's reducers rather than imported
# by module path: `numpy.core` (numpy 1.x) was renamed `numpy._core` in numpy 2
# and the old name now warns, while a reducer always gives the live function.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` inside the pickle.

    Pickles name ``numpy.ndarray`` only as the first argument of
    ``_reconstruct``. Handing out this inert token instead of the class keeps
    a crafted file from calling ``ndarray(shape, dtype, buffer, offset,
    strides)`` directly.
    """

    def __repr__(self):
        return "<numpy.ndarray (pickle token)>"


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by
    # a BUILD that calls ndarray.__setstate__ with shape, dtype and raw bytes.
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError(
            f"_reconstruct may only build numpy.ndarray, not {subtype!r}"
        )
    return _NUMPY_RECONSTRUCT(np.ndarray, shape, dtype)


def _scalar(dtype, data):
    # numpy scalars (e.g. np.float32(1.0)) pickle as scalar(dtype, raw bytes).
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafeCheckpointError(
            f"scalar() expects (numpy.dtype, bytes), got "
            f"({type(dtype).__name__}, {type(data).__name__})"
        )
    return _NUMPY_SCALAR(dtype, data)


def _flat_mapping(mapping):
    # Haiku's FlatMapping.__reduce__ is (FlatMapping, (dict,)); a plain dict
    # carries the same content without needing Haiku.
    if not isinstance(mapping, dict):
        raise UnsafeCheckpointError(
            f"FlatMapping expects a dict, got {type(mapping).__name__}"
        )
    return dict(mapping)


# (module, name) -> object handed to the unpickler. Both numpy module names
# are listed: files from 2021 use numpy.core.multiarray, numpy 2 writes
# numpy._core.multiarray.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("haiku._src.data_structures", "FlatMapping"): _flat_mapping,
}


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``allowed``; a refusal
    says what the checkpoint kind may hold (``holds``). The other readers
    subclass it with their own allow-lists."""

    allowed = _ALLOWED
    holds = (
        "a DeepMind checkpoint holds only numpy arrays in Haiku FlatMappings"
    )

    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name} from {self._path}: "
                f"{self.holds}"
            ) from None

    def persistent_load(self, pid):
        # Persistent ids hand object lookup to the caller; checkpoints have none.
        raise UnsafeCheckpointError(
            f"refusing persistent id {pid!r} in {self._path}"
        )


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"numpy array {value.dtype}{list(value.shape)}"
    return type(value).__name__


def _flatten(tree, path, what):
    """{module: {name: array}} -> {"module/name": array}, checking types."""
    if not isinstance(tree, dict):
        raise ValueError(
            f"{path}: expected {what} to be a mapping of module name -> "
            f"mapping of arrays, found {_describe(tree)}"
        )
    flat = {}
    for module, params in tree.items():
        if not isinstance(module, str) or not isinstance(params, dict):
            raise ValueError(
                f"{path}: expected {what} entry {module!r} to be a mapping of "
                f"parameter name -> array, found {_describe(params)}"
            )
        for name, value in params.items():
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(name, str) or not isinstance(value, np.ndarray):
                raise ValueError(
                    f"{path}: expected {what} entry {module!r}/{name!r} to be a "
                    f"numpy array, found {_describe(value)}"
                )
            # Only plain numbers: an object array could smuggle in anything
            # the unpickler produced, and no Haiku parameter is one.
            if value.dtype.kind not in "biufc":
                raise ValueError(
                    f"{path}: {what} entry {module}/{name} has unsupported "
                    f"dtype {value.dtype}"
                )
            flat[f"{module}/{name}"] = value
    return flat


def _unpickle(path, unpickler, what):
    """`path` read by `unpickler` (a `_CheckpointUnpickler`), `what` (e.g.
    "DeepMind checkpoint") named if the file is missing."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path)
    with open(path, "rb") as f:
        try:
            return unpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            TypeError,
            ValueError,
            AttributeError,
            KeyError,
            IndexError,
        ) as e:
            # Corrupt or truncated data surfaces as assorted errors from the
            # unpickler or numpy; name the file so the cause is findable.
            raise pickle.UnpicklingError(
                f"{path} is not a readable checkpoint pickle: "
                f"{type(e).__name__}: {e}"
            ) from e


def load_deepmind_checkpoint(path):
    """Read a DeepMind Perceiver IO checkpoint without running its code.

    Args:
        path: a ``.pickle`` / ``.pystate`` file as released by DeepMind.

    Returns:
        ``(params, state)``: flat dicts from ``"<haiku module>/<name>"`` to
        numpy arrays. ``state`` (BatchNorm moving averages) is only present in
        ``{'params': ..., 'state': ...}`` files; otherwise it is ``{}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle refers to anything but numpy arrays
            and Haiku FlatMappings (subclass of ``pickle.UnpicklingError``).
        pickle.UnpicklingError: the file is not a readable pickle.
        ValueError: the pickle is not a mapping of mappings of arrays.
    """
    path = os.fspath(path)
    tree = _unpickle(path, _CheckpointUnpickler, "DeepMind checkpoint")

    # The ImageNet .pystate files wrap Haiku's (params, state) pair in a dict.
    if isinstance(tree, dict) and set(tree) in ({"params", "state"}, {"params"}):
        params = _flatten(tree["params"], path, "params")
        state = _flatten(tree.get("state", {}), path, "state")
    else:
        params = _flatten(tree, path, "params")
        state = {}
    return params, state
