"""Safe readers of Hugging Face checkpoints (safetensors, torch .bin)."""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from perceiver_keras.utils.hf_checkpoint import UnsafeCheckpointError
from perceiver_keras.utils.hf_checkpoint import find_weight_file
from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir
from perceiver_keras.utils.hf_checkpoint import read_safetensors
from perceiver_keras.utils.hf_checkpoint import read_torch_bin

torch = pytest.importorskip("torch")


def state_dict():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    return {
        "dense.weight": torch.randn(3, 5),
        "transposed": torch.randn(5, 3).t(),  # non-contiguous
        "shares_storage": base[1:3, 2:5],  # offset and strides
        "scalar": torch.tensor(2.5),
        "ids": torch.arange(7),
        "half": torch.randn(4).half(),
        "bf16": torch.randn(6).to(torch.bfloat16),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def expected(tensors):
    return {
        k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        for k, v in tensors.items()
    }


def assert_same(actual, wanted):
    assert sorted(actual) == sorted(wanted)
    for name, value in wanted.items():
        assert actual[name].dtype == value.dtype, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_torch_bin_matches_torch_load(tmp_path):
    tensors = state_dict()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    assert_same(read_torch_bin(tmp_path / "pytorch_model.bin"),
                expected(tensors))


def test_torch_bin_parameters(tmp_path):
    module = torch.nn.Linear(3, 2)
    torch.save(dict(module.named_parameters()), tmp_path / "p.bin")
    loaded = read_torch_bin(tmp_path / "p.bin")
    np.testing.assert_array_equal(loaded["weight"],
                                  module.weight.detach().numpy())


def test_safetensors_matches_torch(tmp_path):
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state_dict().items()}
    save_file(tensors, tmp_path / "model.safetensors")
    assert_same(read_safetensors(tmp_path / "model.safetensors"),
                expected(tensors))


def test_sharded_safetensors_and_bin(tmp_path):
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state_dict().items()}
    names = sorted(tensors)
    shards = {"a": names[:4], "b": names[4:]}
    for kind in ("safetensors", "bin"):
        directory = tmp_path / kind
        directory.mkdir()
        weight_map = {}
        for shard, keys in shards.items():
            file = f"shard-{shard}.{kind}"
            part = {k: tensors[k] for k in keys}
            if kind == "bin":
                torch.save(part, directory / file)
            else:
                save_file(part, directory / file)
            weight_map.update({k: file for k in keys})
        index = "model.safetensors" if kind == "safetensors" else (
            "pytorch_model.bin")
        with open(directory / f"{index}.index.json", "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        assert_same(load_checkpoint_dir(directory), expected(tensors))


def test_prefers_safetensors(tmp_path):
    torch.save({"x": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, tmp_path / "model.safetensors")
    assert find_weight_file(tmp_path).endswith("model.safetensors")
    with pytest.raises(FileNotFoundError, match="expected one of"):
        find_weight_file(tmp_path / "nowhere")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bin_with_pickle(path, payload):
    """A zip laid out as torch.save's, with `payload` as data.pkl."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def test_malicious_bin_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    _bin_with_pickle(path, pickle.dumps({"w": _RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_torch_bin(path)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "evil.bin"
    _bin_with_pickle(path, pickle.dumps({"w": io.BytesIO}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="_io.BytesIO"):
        read_torch_bin(path)


def test_tensor_outside_storage_is_refused(tmp_path):
    t = torch.arange(4, dtype=torch.float32)
    torch.save({"x": t}, tmp_path / "ok.bin")
    with zipfile.ZipFile(tmp_path / "ok.bin") as src:
        items = {n: src.read(n) for n in src.namelist()}
    name = [n for n in items if n.endswith("data.pkl")][0]
    items[name] = items[name].replace(b"K\x04\x85", b"K\x09\x85", 1)
    with zipfile.ZipFile(tmp_path / "bad.bin", "w") as dst:
        for n, data in items.items():
            dst.writestr(n, data)
    with pytest.raises(UnsafeCheckpointError, match="outside its storage"):
        read_torch_bin(tmp_path / "bad.bin")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x80\x02}q\x00.")  # legacy-style pickle
    with pytest.raises(ValueError, match="legacy"):
        read_torch_bin(tmp_path / "x.bin")
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(tmp_path / "x.safetensors")


def test_reads_without_torch(tmp_path):
    tensors = {"w": torch.randn(2, 3), "b": torch.randn(3).to(torch.bfloat16)}
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    np.save(tmp_path / "w.npy", tensors["w"].numpy())
    code = textwrap.dedent(
        f"""
        import sys

        class NoTorch:  # any import of torch fails
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch is blocked")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from perceiver_keras.utils.hf_checkpoint import read_torch_bin
        loaded = read_torch_bin({str(tmp_path / "pytorch_model.bin")!r})
        assert (loaded["w"] == np.load({str(tmp_path / "w.npy")!r})).all()
        assert loaded["b"].dtype == np.float32
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("shard", ["model.safetensors.index.json",
                                   "../model.safetensors"])
def test_index_naming_a_bad_shard_is_refused(tmp_path, shard):
    """An index may name shards in its own directory only, never another
    index (which could name itself)."""
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"x": shard}}, f)
    with pytest.raises(ValueError, match="is not a .safetensors or .bin"):
        load_checkpoint_dir(tmp_path)


def test_state_dict_with_metadata(tmp_path):
    """`torch.save(module.state_dict())`: an OrderedDict whose `_metadata`
    attribute the pickle restores with BUILD (the most common .bin)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    state = module.state_dict()
    assert hasattr(state, "_metadata")
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = read_torch_bin(tmp_path / "pytorch_model.bin")
    assert type(loaded) is dict
    assert_same(loaded, expected(state))


def test_malicious_state_dict_metadata_is_refused(tmp_path):
    """What BUILD restores goes through the allow-list too."""
    import collections

    marker = tmp_path / "pwned"
    state = collections.OrderedDict(w=torch.ones(2))
    state._metadata = {"": _RunsCode(marker)}
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_torch_bin(path)
    assert not marker.exists()
