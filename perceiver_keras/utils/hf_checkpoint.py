"""Safe readers for Hugging Face checkpoints: safetensors and `.bin` files.

Both return `{tensor name: numpy array}` and need neither torch nor the
`safetensors` package.

- `model.safetensors` is a length-prefixed JSON header followed by raw
  little-endian tensor bytes; it is parsed directly (bfloat16 becomes
  float32, which holds every bfloat16 value exactly).
- `pytorch_model.bin` (`torch.save`'s zip format) holds `data.pkl`, a pickle
  that rebuilds tensors from storages kept as separate files in the archive.
  A plain `torch.load` would run whatever the pickle asks for; here the
  pickle is read with an allow-list unpickler that knows only `OrderedDict`,
  torch's `_rebuild_tensor_v2` / `_rebuild_parameter` and the storage
  classes, all replaced by NumPy stand-ins (a state dict's `_metadata`
  attribute is read and dropped). Anything else is refused with
  `UnsafeCheckpointError` before it runs.
- Sharded checkpoints (`*.index.json` with a `weight_map`) are read shard by
  shard.
"""

import json
import mmap
import os
import pickle
import zipfile

import numpy as np

from perceiver_keras.utils.deepmind_checkpoint import UnsafeCheckpointError
from perceiver_keras.utils.deepmind_checkpoint import _CheckpointUnpickler

__all__ = [
    "UnsafeCheckpointError",
    "WEIGHT_FILES",
    "find_weight_file",
    "load_checkpoint_dir",
    "read_safetensors",
    "read_torch_bin",
    "read_weight_file",
]

# In the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# --- safetensors -------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": "bfloat16", "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# Refuse absurd headers before reading them (transformers' are a few KB).
_MAX_HEADER_BYTES = 100 * 2**20


def _bfloat16_to_float32(raw):
    """bfloat16 bits (uint16) -> float32: the bfloat16 is the top half."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _from_bytes(buffer, dtype, shape, what):
    """A NumPy copy of little-endian `buffer` as `dtype` with `shape`."""
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == "bfloat16":
        raw = np.frombuffer(buffer, dtype="<u2", count=count)
        return _bfloat16_to_float32(raw).reshape(shape)
    dtype = np.dtype(dtype).newbyteorder("<")
    if len(buffer) != count * dtype.itemsize:
        raise ValueError(
            f"{what}: expected {count * dtype.itemsize} bytes for shape "
            f"{list(shape)} of {dtype.name}, found {len(buffer)}."
        )
    array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_safetensors(path, select=None):
    """`{name: array}` from a `.safetensors` file, checked against its size.

    `select(name) -> bool`, when given, keeps only the tensors it accepts;
    the others' bytes are never copied."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short).")
        header_size = int.from_bytes(prefix, "little")
        if header_size > _MAX_HEADER_BYTES:
            raise ValueError(
                f"{path} is not a safetensors file (header of {header_size} "
                "bytes)."
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header: {e}")
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the safetensors header is not a dict.")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = 8 + header_size
            tensors = {}
            for name, info in header.items():
                if name == "__metadata__" or (
                    select is not None and not select(name)
                ):
                    continue
                tensors[name] = _safetensors_entry(
                    path, data, start, name, info
                )
    return tensors


def _safetensors_entry(path, data, start, name, info):
    what = f"{path}: tensor {name!r}"
    try:
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{what}: expected dtype in {sorted(_SAFETENSORS_DTYPES)}, a "
            f"shape and data_offsets. Received: {info!r:.200}"
        ) from None
    if not 0 <= begin <= end <= len(data) - start:
        raise ValueError(f"{what}: data offsets {begin}..{end} out of range.")
    return _from_bytes(data[start + begin:start + end], dtype, shape, what)


# --- torch .bin (zip) --------------------------------------------------------

# torch storage class name -> little-endian NumPy dtype of its elements.
_TORCH_STORAGES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "<i1", "ByteStorage": "<u1",
    "BoolStorage": "?",
}


class _StorageType:
    """Inert stand-in for a torch storage class: only names a dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = _TORCH_STORAGES[name]

    def __repr__(self):
        return f"<torch.{self.name} (pickle token)>"


class _Storage:
    """A storage's elements as a flat NumPy array."""

    def __init__(self, array):
        self.array = array


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied.

    `unused` is `(requires_grad, backward_hooks[, metadata])`.
    """
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError(
            "_rebuild_tensor_v2 expects a storage, got "
            f"{type(storage).__name__}"
        )
    flat = storage.array
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise UnsafeCheckpointError(
            f"bad tensor layout: size {size}, stride {stride}"
        )
    last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n)
    if 0 in size:
        return np.zeros(size, flat.dtype)
    if not 0 <= offset <= last < flat.size:
        raise UnsafeCheckpointError(
            f"tensor of size {size}, stride {stride}, offset {offset} reaches "
            f"outside its storage of {flat.size} elements"
        )
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * itemsize for s in stride],
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    """torch._utils._rebuild_parameter: a Parameter is just its tensor here."""
    if not isinstance(data, np.ndarray):
        raise UnsafeCheckpointError(
            f"_rebuild_parameter expects a tensor, got {type(data).__name__}"
        )
    return data


class _StateDict(dict):
    """`OrderedDict` stand-in. `state_dict()` returns one carrying a
    `_metadata` attribute (module versions), which the pickle restores with
    BUILD; its contents went through `find_class` like everything else, and
    are dropped here."""

    def __setstate__(self, state):
        pass


def _ordered_dict(*args):
    # `OrderedDict()` (then filled by SETITEMS) or `OrderedDict(list)`.
    return _StateDict(*args)


_TORCH_ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _TORCH_STORAGES},
}


class _TorchUnpickler(_CheckpointUnpickler):
    """Resolves only `_TORCH_ALLOWED`; storages come from the zip archive."""

    allowed = _TORCH_ALLOWED
    holds = "a transformers checkpoint holds only tensors in a dict"

    def __init__(self, file, archive, prefix, path):
        super().__init__(file, path)
        self._archive = archive
        self._prefix = prefix
        self._storages = {}

    def persistent_load(self, pid):
        # ("storage", storage class, key, location, number of elements)
        if (
            not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str) or not pid[2].isdigit()
        ):
            raise UnsafeCheckpointError(
                f"refusing persistent id {pid!r:.200} in {self._path}"
            )
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = _Storage(
                _storage_array(raw, storage_type, int(numel), self._path)
            )
        return self._storages[key]


def _storage_array(raw, storage_type, numel, path):
    if storage_type.dtype == "bfloat16":
        array = _bfloat16_to_float32(np.frombuffer(raw, "<u2"))
    else:
        dtype = np.dtype(storage_type.dtype)
        array = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
    if array.size != numel:
        raise ValueError(
            f"{path}: storage of {storage_type.name} should hold {numel} "
            f"elements, holds {array.size}"
        )
    return array


def read_torch_bin(path, select=None):
    """`{name: array}` from a `torch.save` zip file, executing nothing.

    `select(name) -> bool` keeps only the tensors it accepts.

    Raises:
        UnsafeCheckpointError: the pickle asks for anything but tensors in
            dicts (subclass of `pickle.UnpicklingError`).
        ValueError: not a zip-format `torch.save` file, or malformed.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip-format torch checkpoint. Files written by "
            "torch < 1.6 (legacy format) are not supported: load and re-save "
            "them with a recent torch, or convert them to safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(
                f"{path}: expected one */data.pkl in the archive, found "
                f"{len(pickles)}."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist():
            if archive.read(byteorder).strip() != b"little":
                raise ValueError(f"{path}: big-endian checkpoints unsupported.")
        with archive.open(pickles[0]) as f:
            try:
                tree = _TorchUnpickler(f, archive, prefix, path).load()
            except UnsafeCheckpointError:
                raise
            except (
                pickle.UnpicklingError, EOFError, TypeError, ValueError,
                AttributeError, KeyError, IndexError,
            ) as e:
                raise pickle.UnpicklingError(
                    f"{path} is not a readable torch checkpoint: "
                    f"{type(e).__name__}: {e}"
                ) from e
    tree = dict(_check_flat(tree, path))
    if select is not None:
        tree = {name: value for name, value in tree.items() if select(name)}
    return tree


def _check_flat(tree, path):
    """The checkpoint must be `{str: array}` (a state dict)."""
    if not isinstance(tree, dict):
        raise ValueError(
            f"{path}: expected a state dict, found {type(tree).__name__}."
        )
    for name, value in tree.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: entry {name!r} is {type(value).__name__}, not a "
                "tensor."
            )
    return tree


# --- files and directories ---------------------------------------------------


def read_weight_file(path, select=None):
    """Reads one `.safetensors`, `.bin` or sharded `*.index.json` file.

    `select(name) -> bool`, when given, keeps only the tensors it accepts
    (shards holding none of them are not opened)."""
    path = os.fspath(path)
    if path.endswith(".index.json"):
        return _read_sharded(path, select)
    if path.endswith(".safetensors"):
        return read_safetensors(path, select)
    if path.endswith(".bin"):
        return read_torch_bin(path, select)
    raise ValueError(
        "`path` must name a .safetensors, .bin or .index.json file. "
        f"Received: {path!r}."
    )


def _read_sharded(index_path, select=None):
    with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: no `weight_map` in the index.")
    if select is not None:
        weight_map = {k: v for k, v in weight_map.items() if select(k)}
    directory = os.path.dirname(index_path)
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard or not shard.endswith(
            (".safetensors", ".bin")
        ):
            raise ValueError(
                f"{index_path}: shard {shard!r} is not a .safetensors or "
                ".bin file name in the same directory."
            )
        tensors.update(
            read_weight_file(os.path.join(directory, shard), select)
        )
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(
            f"{index_path}: {len(missing)} tensors named in the index are "
            f"absent from the shards, e.g. {missing[:3]}."
        )
    return tensors


def find_weight_file(directory):
    """The weight file transformers would load from `directory`."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No weights in {directory}: expected one of {list(WEIGHT_FILES)}."
    )


def load_checkpoint_dir(directory, select=None):
    """`{name: array}` of a transformers `save_pretrained` directory
    (only the names `select` accepts, when given)."""
    return read_weight_file(find_weight_file(directory), select)
