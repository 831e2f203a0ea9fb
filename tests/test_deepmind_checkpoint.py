"""Tests for the safe DeepMind checkpoint reader (no Keras needed)."""

import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from perceiver_keras.utils.deepmind_checkpoint import (
    UnsafeCheckpointError,
    load_deepmind_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "deepmind"
MODULE_FILE = (
    Path(__file__).parents[1] / "perceiver_keras" / "utils" / "deepmind_checkpoint.py"
)
KINDS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
IMAGENET_KINDS = [k for k in KINDS if k.startswith("image_")]


def _config(kind):
    return json.loads((FIXTURES / kind / "config.json").read_text())


def _checkpoint(kind):
    return FIXTURES / kind / _config(kind)["checkpoint"]


# --- trusted references ----------------------------------------------------


@pytest.fixture
def fake_haiku(monkeypatch):
    """Registers a stand-in `haiku._src.data_structures.FlatMapping`.

    This lets the test itself use plain `pickle` (to get a reference, or to
    write new checkpoints) without Haiku installed. Removed after each test.
    """
    module = types.ModuleType("haiku._src.data_structures")

    class FlatMapping(dict):
        # Same reduction as Haiku's FlatMapping: (FlatMapping, (dict,)).
        def __reduce__(self):
            return FlatMapping, (dict(self),)

    FlatMapping.__module__ = module.__name__
    FlatMapping.__qualname__ = "FlatMapping"
    module.FlatMapping = FlatMapping
    monkeypatch.setitem(sys.modules, "haiku", types.ModuleType("haiku"))
    monkeypatch.setitem(sys.modules, "haiku._src", types.ModuleType("haiku._src"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return FlatMapping


def _plain_pickle_load(path):
    """Unrestricted pickle.load; only ever used on the trusted fixtures."""
    with open(path, "rb") as f, warnings.catch_warnings():
        # numpy 2 warns about the old `numpy.core` name used by the fixtures.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.load(f)


def _walk(tree):
    """{module: {name: array}} -> {"module/name": array}, written independently."""
    return {
        f"{module}/{name}": value
        for module, params in tree.items()
        for name, value in params.items()
    }


def _pickletools_array_payloads(data):
    """Raw data of every array in the pickle, found by reading its opcodes.

    numpy pickles an array as `_reconstruct(...)` (a GLOBAL, or a memo GET of
    it once memoised) followed by a BUILD whose state tuple ends with the raw
    bytes. This counts `_reconstruct` references and collects the bytes that
    end a tuple handed to BUILD, without unpickling anything.
    """
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    memo_puts = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}
    recon_memo = set()
    n_reconstruct = 0
    payloads = []

    def next_real(i):
        # Index of the next opcode that is not a memo put.
        while i < len(ops) and ops[i][0] in memo_puts:
            i += 1
        return i

    for i, (name, arg) in enumerate(ops):
        if name == "GLOBAL" and arg.endswith(" _reconstruct"):
            n_reconstruct += 1
            if i + 1 < len(ops) and ops[i + 1][0] in memo_puts:
                recon_memo.add(ops[i + 1][1])
        elif name in ("BINGET", "LONG_BINGET", "GET") and arg in recon_memo:
            n_reconstruct += 1
        elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            j = next_real(i + 1)
            if j < len(ops) and ops[j][0] == "TUPLE":
                k = next_real(j + 1)
                if k < len(ops) and ops[k][0] == "BUILD":
                    payloads.append(arg)
    return n_reconstruct, payloads


# --- the fixtures load, with the right content ------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_loads_float32_arrays(kind):
    params, state = load_deepmind_checkpoint(_checkpoint(kind))
    assert params
    for key, value in {**params, **state}.items():
        assert isinstance(value, np.ndarray), key
    for key, value in params.items():
        assert value.dtype == np.float32, key


@pytest.mark.parametrize("kind", KINDS)
def test_matches_plain_pickle_with_stub_flatmapping(kind, fake_haiku):
    params, state = load_deepmind_checkpoint(_checkpoint(kind))
    tree = _plain_pickle_load(_checkpoint(kind))
    if kind in IMAGENET_KINDS:
        assert set(tree) == {"params", "state"}
        ref_params, ref_state = _walk(tree["params"]), _walk(tree["state"])
    else:
        assert isinstance(tree, fake_haiku)
        ref_params, ref_state = _walk(tree), {}
    for got, ref in ((params, ref_params), (state, ref_state)):
        assert list(got) == list(ref)
        for key in ref:
            assert got[key].dtype == ref[key].dtype, key
            assert got[key].shape == ref[key].shape, key
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_pickletools_count(kind):
    data = _checkpoint(kind).read_bytes()
    opnames = {op.name for op, _, _ in pickletools.genops(data)}
    # The counter above only follows GLOBAL; make sure nothing else is used.
    assert "STACK_GLOBAL" not in opnames
    n_reconstruct, payloads = _pickletools_array_payloads(data)

    params, state = load_deepmind_checkpoint(_checkpoint(kind))
    arrays = list(params.values()) + list(state.values())
    assert len(arrays) == n_reconstruct == len(payloads)
    assert sum(a.nbytes for a in arrays) == sum(len(p) for p in payloads)
    # Same bytes, in file order.
    assert [a.tobytes() for a in arrays] == payloads


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_shapes_follow_config(kind):
    cfg = _config(kind)["deepmind_config"]
    enc = cfg["encoder"]
    scope = enc.get("name", "perceiver_encoder")
    params, _ = load_deepmind_checkpoint(_checkpoint(kind))

    latents = params[f"{scope}/~/trainable_position_encoding/pos_embs"]
    assert latents.shape == (enc["z_index_dim"], enc["num_z_channels"])
    query_norm = params[f"{scope}/~/cross_attention/layer_norm/scale"]
    assert query_norm.shape == (enc["num_z_channels"],)
    # DeepMind shares self-attention weights across blocks: one module per
    # self-attend in a block, named self_attention, self_attention_1, ...
    n = enc["num_self_attends_per_block"]
    names = ["self_attention"] + [f"self_attention_{i}" for i in range(1, n)]
    for name in names:
        w = params[f"{scope}/~/{name}/mlp/linear/w"]
        assert w.shape == (enc["num_z_channels"], enc["num_z_channels"])
    assert not any(k.startswith(f"{scope}/~/self_attention_{n}/") for k in params)


def _fourier_channels(fourier_kwargs):
    # sin and cos per band per axis, plus the raw positions when concat_pos.
    dims = len(fourier_kwargs["max_resolution"])
    n = 2 * fourier_kwargs["num_bands"] * dims
    return n + (dims if fourier_kwargs["concat_pos"] else 0)


@pytest.mark.parametrize("kind", IMAGENET_KINDS)
def test_imagenet_shapes_and_state(kind):
    cfg = _config(kind)["deepmind_config"]
    prep, dec = cfg["input_preprocessor"], cfg["decoder"]
    params, state = load_deepmind_checkpoint(_checkpoint(kind))
    query_channels = dec["trainable_position_encoding_kwargs"]["num_channels"]
    head = "classification_decoder/~/basic_decoder"
    assert params[f"{head}/~/trainable_position_encoding/pos_embs"].shape == (
        1,
        query_channels,
    )
    assert params[f"{head}/output/w"].shape == (query_channels, cfg["num_classes"])
    assert params[f"{head}/output/b"].shape == (cfg["num_classes"],)

    kv = params["perceiver_encoder/~/cross_attention/layer_norm_1/scale"]
    if prep["prep_type"] == "conv":
        c = prep["num_channels"]
        stem = "image_preprocessor/~/conv2_d_downsample/~"
        assert params[f"{stem}/conv/w"].shape == (7, 7, 3, c)
        assert params[f"{stem}/batchnorm/scale"].shape == (1, 1, 1, c)
        assert params[f"{stem}/batchnorm/offset"].shape == (1, 1, 1, c)
        for ema in ("mean_ema", "var_ema"):
            average = state[f"{stem}/batchnorm/~/{ema}/average"]
            assert average.shape == (1, 1, 1, c)
            assert average.dtype == np.float32
            assert np.all(np.isfinite(average))
        # var_ema tracks a variance: never negative.
        assert np.all(state[f"{stem}/batchnorm/~/var_ema/average"] >= 0)
        fourier = prep["fourier_position_encoding_kwargs"]
        assert kv.shape == (c + _fourier_channels(fourier),)
    else:
        # No BatchNorm, so the `state` entry of the .pystate is empty.
        assert state == {}
    if prep["prep_type"] == "pixels":
        fourier = prep["fourier_position_encoding_kwargs"]
        assert kv.shape == (3 + _fourier_channels(fourier),)
    if prep["prep_type"] == "conv1x1":
        c = prep["num_channels"]
        pos_c = prep["trainable_position_encoding_kwargs"]["num_channels"]
        assert params["image_preprocessor/~/conv2_d/w"].shape == (1, 1, 3, c)
        pos = "image_preprocessor/~_build_network_inputs"
        assert params[f"{pos}/trainable_position_encoding/pos_embs"].shape == (
            cfg["image_size"] ** 2,
            pos_c,
        )
        assert params[f"{pos}/position_encoding_projector/linear/w"].shape == (
            pos_c,
            prep["project_pos_dim"],
        )
        assert kv.shape == (c + prep["project_pos_dim"],)


def test_conv_state_is_nonempty():
    _, state = load_deepmind_checkpoint(_checkpoint("image_conv-public"))
    assert len(state) == 6  # {mean,var}_ema x {average, hidden, counter}
    assert any(k.endswith("mean_ema/average") for k in state)
    assert any(k.endswith("var_ema/average") for k in state)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in IMAGENET_KINDS])
def test_params_only_files_have_empty_state(kind):
    _, state = load_deepmind_checkpoint(_checkpoint(kind))
    assert state == {}


def test_mlm_shapes():
    cfg = _config("mlm-public")["deepmind_config"]
    enc, dec = cfg["encoder"], cfg["decoder"]
    params, _ = load_deepmind_checkpoint(_checkpoint("mlm-public"))
    assert params["embed/embeddings"].shape == (cfg["vocab_size"], cfg["d_model"])
    assert params["trainable_position_encoding/pos_embs"].shape == (
        cfg["max_seq_len"],
        cfg["d_model"],
    )
    assert params["embedding_decoder/bias"].shape == (cfg["vocab_size"],)
    assert params["basic_decoder/~/trainable_position_encoding/pos_embs"].shape == (
        dec["output_index_dims"],
        dec["trainable_position_encoding_kwargs"]["num_channels"],
    )
    # final_project=False: the decoder has no output projection.
    assert not any(k.startswith("basic_decoder/output/") for k in params)
    ca = "perceiver_encoder/~/cross_attention/attention"
    assert params[f"{ca}/linear/w"].shape == (enc["num_z_channels"], enc["qk_channels"])
    assert params[f"{ca}/linear_1/w"].shape == (cfg["d_model"], enc["qk_channels"])
    assert params[f"{ca}/linear_2/w"].shape == (cfg["d_model"], enc["v_channels"])


def test_optical_flow_shapes():
    cfg = _config("optical_flow-public")["deepmind_config"]
    prep, dec = cfg["input_preprocessor"], cfg["decoder"]
    params, _ = load_deepmind_checkpoint(_checkpoint("optical_flow-public"))
    # 3x3 patches of 3 colours, two frames stacked before the linear.
    assert params["image_preprocessor/patches_linear/w"].shape == (
        3 * 3 * 3 * 2,
        prep["num_channels"],
    )
    kv = params["perceiver_encoder/~/cross_attention/layer_norm_1/scale"]
    fourier = prep["fourier_position_encoding_kwargs"]
    assert kv.shape == (prep["num_channels"] + _fourier_channels(fourier),)
    out = params["flow_decoder/~/basic_decoder/output/w"]
    assert out.shape[1] == dec["output_num_channels"]


def test_multimodal_shapes():
    cfg = _config("multimodal-public")["deepmind_config"]
    post = cfg["output_postprocessor"]
    params, _ = load_deepmind_checkpoint(_checkpoint("multimodal-public"))
    c = cfg["decoder"]["output_num_channels"]
    assert params["audio_postprocessor/linear/w"].shape == (
        c,
        post["audio"]["samples_per_patch"],
    )
    assert params["projection_postprocessor/linear/w"].shape == (
        c,
        post["image"]["num_outputs"],
    )
    assert params["classification_postprocessor/linear/w"].shape == (
        c,
        post["label"]["num_classes"],
    )
    assert not any(k.startswith("perceiver_encoder/") for k in params)


def test_loader_imports_neither_haiku_nor_jax(tmp_path):
    # Load the module file directly, so that whatever the package __init__
    # imports (keras may pull in jax) does not count.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dmc', {str(MODULE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"p, s = m.load_deepmind_checkpoint({str(_checkpoint('image_conv-public'))!r})\n"
        "assert p and s\n"
        "bad = [n for n in ('haiku', 'jax') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# --- numpy 2 module names ---------------------------------------------------


@pytest.mark.parametrize("kind", ["image_conv-public", "mlm-public"])
def test_numpy_core_renamed_pickle_loads(kind, tmp_path):
    data = _checkpoint(kind).read_bytes()
    old = b"cnumpy.core.multiarray\n_reconstruct\n"
    new = b"cnumpy._core.multiarray\n_reconstruct\n"
    assert data.count(old) == 1
    # GLOBAL is newline-terminated text and protocol 3 has no frames, so a
    # byte-level rename gives a valid pickle.
    renamed = data.replace(old, new)
    globals_used = {
        arg for op, arg, _ in pickletools.genops(renamed) if op.name == "GLOBAL"
    }
    assert "numpy._core.multiarray _reconstruct" in globals_used
    assert "numpy.core.multiarray _reconstruct" not in globals_used
    path = tmp_path / "renamed.pickle"
    path.write_bytes(renamed)

    params, state = load_deepmind_checkpoint(_checkpoint(kind))
    params2, state2 = load_deepmind_checkpoint(path)
    for got, ref in ((params2, params), (state2, state)):
        assert list(got) == list(ref)
        for key in ref:
            assert got[key].dtype == ref[key].dtype
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_checkpoint_written_by_numpy2_loads(tmp_path, fake_haiku):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    counter = np.array(7, dtype=np.int32)
    tree = {
        "params": fake_haiku({"mod/linear": fake_haiku({"w": w, "b": b})}),
        # A numpy scalar exercises the `scalar` reconstructor.
        "state": fake_haiku(
            {"mod/~/ema": fake_haiku({"counter": counter, "hidden": np.float32(0.5)})}
        ),
    }
    data = pickle.dumps(tree, protocol=3)
    globals_used = {a for op, a, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert "numpy._core.multiarray _reconstruct" in globals_used
        assert "numpy._core.multiarray scalar" in globals_used
    path = tmp_path / "written.pystate"
    path.write_bytes(data)

    params, state = load_deepmind_checkpoint(path)
    assert list(params) == ["mod/linear/w", "mod/linear/b"]
    np.testing.assert_array_equal(params["mod/linear/w"], w)
    np.testing.assert_array_equal(params["mod/linear/b"], b)
    assert params["mod/linear/w"].dtype == np.float32
    assert state["mod/~/ema/counter"].dtype == np.int32
    assert int(state["mod/~/ema/counter"]) == 7
    assert state["mod/~/ema/hidden"].dtype == np.float32
    assert float(state["mod/~/ema/hidden"]) == 0.5


# --- malicious pickles are refused -------------------------------------------


class _Payload:
    """Pickles as a call to `func(*args)`."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(sentinel):
    return {
        "os.system": (
            _Payload(os.system, (f"touch {sentinel}",)),
            ("posix.system", "os.system"),
        ),
        "builtins.eval": (
            _Payload(eval, (f"open({str(sentinel)!r}, 'w').close()",)),
            ("builtins.eval",),
        ),
        "subprocess.Popen": (
            _Payload(subprocess.Popen, (["touch", str(sentinel)],)),
            ("subprocess.Popen",),
        ),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_code_execution_refused(name, where, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    payload, expected_names = _payloads(sentinel)[name]
    obj = payload if where == "top" else {"params": {"mod": {"w": payload}}}
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=3))

    with pytest.raises(pickle.UnpicklingError) as info:
        load_deepmind_checkpoint(path)
    assert isinstance(info.value, UnsafeCheckpointError)
    message = str(info.value)
    assert any(n in message for n in expected_names), message
    assert str(path) in message
    assert not sentinel.exists()


def test_payload_is_live_under_plain_pickle(tmp_path):
    # Control: the os.system pickle above really does run code when loaded
    # without the allow-list (in a child process, touching only tmp_path).
    sentinel = tmp_path / "SENTINEL"
    payload, _ = _payloads(sentinel)["os.system"]
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(payload, protocol=3))
    code = f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert sentinel.exists()


def test_other_numpy_globals_refused(tmp_path):
    # Only the reconstructors are allowed, not numpy at large.
    path = tmp_path / "np_load.pickle"
    path.write_bytes(pickle.dumps(_Payload(np.load, (str(tmp_path / "x.npy"),)), 3))
    with pytest.raises(UnsafeCheckpointError, match=r"numpy\.load"):
        load_deepmind_checkpoint(path)


def test_protocol4_stack_global_refused(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    payload, _ = _payloads(sentinel)["os.system"]
    path = tmp_path / "evil4.pickle"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        load_deepmind_checkpoint(path)
    assert not sentinel.exists()


def test_ndarray_cannot_be_called_directly(tmp_path):
    # `numpy ndarray` is only a marker for _reconstruct: REDUCE on it fails.
    data = b"\x80\x03cnumpy\nndarray\nK\x02\x85R."
    path = tmp_path / "ndarray_call.pickle"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match=str(path).replace("\\", "\\\\")):
        load_deepmind_checkpoint(path)


def test_reconstruct_of_other_type_refused(tmp_path):
    data = (
        b"\x80\x03cnumpy.core.multiarray\n_reconstruct\n"
        b"cnumpy\ndtype\nK\x00\x85C\x01b\x87R."
    )
    path = tmp_path / "recon.pickle"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="_reconstruct"):
        load_deepmind_checkpoint(path)


def test_persistent_id_refused(tmp_path):
    class PidPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "external" if isinstance(obj, str) and obj == "ref" else None

    buf = io.BytesIO()
    PidPickler(buf, protocol=3).dump({"mod": {"w": "ref"}})
    path = tmp_path / "pid.pickle"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="persistent id"):
        load_deepmind_checkpoint(path)


# --- clear errors for files that are not checkpoints -------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pickle"
    with pytest.raises(FileNotFoundError, match="nope.pickle") as info:
        load_deepmind_checkpoint(path)
    assert info.value.filename == str(path)


@pytest.mark.parametrize(
    "obj, found",
    [
        ([np.zeros(3, np.float32)], "list"),
        ({"mod": np.zeros(3, np.float32)}, "numpy array"),
        ({"mod": {"w": "not an array"}}, "str"),
        ({"params": {"mod": [1, 2]}, "state": {}}, "list"),
        ({"mod": {"w": np.array([1, "a"], dtype=object)}}, "object"),
    ],
)
def test_wrong_structure_is_value_error(obj, found, tmp_path):
    path = tmp_path / "wrong.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=3))
    with pytest.raises(ValueError, match=found) as info:
        load_deepmind_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", b"\x80\x03}q\x00(X"])
def test_unreadable_pickle(data, tmp_path):
    path = tmp_path / "garbage.pickle"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_deepmind_checkpoint(path)
    assert str(path) in str(info.value)
