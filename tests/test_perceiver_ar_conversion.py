"""Perceiver AR against its two references, on their own checkpoints.

Fixtures (tests/fixtures/perceiver_ar, see its README): DeepMind
`checkpoint.dill` files (google-research/perceiver-ar, Haiku) and a
krasserm `save_pretrained` directory (perceiver-io, PyTorch), each with
inputs and the reference code's outputs.
"""

import json
import os
import pickle
import shutil

import keras
import numpy as np
import pytest

from perceiver_keras.conversion import perceiver_ar as conversion
from perceiver_keras.utils.deepmind_ar_checkpoint import (
    load_perceiver_ar_checkpoint,
)
from perceiver_keras.utils.deepmind_checkpoint import UnsafeCheckpointError
from harness import load_script
from tests.conftest import assert_close

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "perceiver_ar")
DEEPMIND_CASES = ("rotary", "absolute_sinusoidal")
KRASSERM = os.path.join(FIXTURES, "krasserm", "clm")


def deepmind_case(case):
    directory = os.path.join(FIXTURES, "deepmind", case)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    checkpoint = os.path.join(directory, config["checkpoint"])
    return directory, config, checkpoint


def load_npz(directory, name):
    with np.load(os.path.join(directory, name)) as data:
        return dict(data)


@pytest.fixture(scope="module")
def deepmind_models():
    models = {}
    for case in DEEPMIND_CASES:
        _, config, checkpoint = deepmind_case(case)
        models[case] = conversion.convert_deepmind(checkpoint, config)
    return models


@pytest.fixture(scope="module")
def krasserm_model():
    return conversion.convert_krasserm(os.path.join(KRASSERM, "checkpoint"))


# --- the safe checkpoint.dill reader ------------------------------------------


def test_dill_reader_reads_params_and_the_optimizer_namedtuples():
    _, _, checkpoint = deepmind_case("rotary")
    params, step = load_perceiver_ar_checkpoint(checkpoint)
    assert step == 1000
    assert params["perceiver_ar/~/embed/embeddings"].shape == (262, 32)
    assert params["perceiver_ar/~/logits/w"].shape == (32, 262)
    assert len(params) == 57  # as the fixture README lists them


def _text(value):
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _pickle_with_global(module, name, *args):
    """What a tampered file would hold: GLOBAL module.name, called on
    string arguments (REDUCE)."""
    call = b"".join(_text(a) for a in args) + b"\x85\x86\x87"[len(args) - 1:
                                                               len(args)]
    return (b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n"
            + call + b"R.")


@pytest.mark.parametrize(
    "module,name", [("os", "system"), ("builtins", "eval"),
                    ("dill._dill", "_load_type")]
)
def test_dill_reader_refuses_other_globals_by_name(tmp_path, module, name):
    path = tmp_path / "checkpoint.dill"
    path.write_bytes(_pickle_with_global(module, name, "echo unsafe"))
    with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
        load_perceiver_ar_checkpoint(path)


def test_dill_reader_refuses_a_namedtuple_with_code_in_its_fields(tmp_path):
    payload = _pickle_with_global("dill._dill", "_create_namedtuple", "T",
                                  "x); import os#", "m")
    path = tmp_path / "checkpoint.dill"
    path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match="identifier"):
        load_perceiver_ar_checkpoint(path)


def test_dill_reader_refuses_a_file_that_is_not_the_experiment_layout(
        tmp_path):
    path = tmp_path / "checkpoint.dill"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="'params'"):
        load_perceiver_ar_checkpoint(path)


# --- DeepMind ------------------------------------------------------------------


@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_deepmind_logits_match_the_reference(deepmind_models, case):
    directory, _, _ = deepmind_case(case)
    inputs = load_npz(directory, "inputs.npz")
    expected = load_npz(directory, "outputs.npz")
    outputs = conversion.run_deepmind_inputs(deepmind_models[case], inputs)
    valid = expected["latent_last_steps"] >= 0
    assert valid.sum() == 22  # row 3 has 6 tokens for 8 latents
    assert_close(outputs["logits"][valid], expected["logits"][valid])


@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_deepmind_parameter_count_equals_the_checkpoint(deepmind_models,
                                                        case):
    _, _, checkpoint = deepmind_case(case)
    params, _ = load_perceiver_ar_checkpoint(checkpoint)
    total = sum(int(np.prod(v.shape)) for v in params.values())
    assert deepmind_models[case].count_params() == total


def test_deepmind_config_that_does_not_match_the_checkpoint_is_refused():
    _, config, checkpoint = deepmind_case("rotary")
    config = json.loads(json.dumps(config))
    config["constructor_kwargs"]["num_transformers_per_block"] = 3
    with pytest.raises(ValueError, match="self_attention_2"):
        conversion.convert_deepmind(checkpoint, config)


def test_deepmind_unsupported_option_is_refused_by_name():
    _, config, checkpoint = deepmind_case("rotary")
    kwargs = dict(config["constructor_kwargs"], mask_style="all")
    with pytest.raises(ValueError, match="mask_style"):
        conversion.deepmind_backbone_kwargs(kwargs)


def test_deepmind_latents_per_position_map_and_load():
    """num_latents_per_position K: z_index_dim counts latents, ours
    positions; `z_pos_enc/pos_embs` [K, C] is read into the backbone."""
    from perceiver_keras import PerceiverARBackbone
    from perceiver_keras.conversion.common import assign_weights

    _, config, checkpoint = deepmind_case("rotary")
    base = config["constructor_kwargs"]
    kwargs = dict(base, num_latents_per_position=2,
                  z_index_dim=2 * base["z_index_dim"])
    mapped = conversion.deepmind_backbone_kwargs(kwargs)
    assert mapped["latents_per_position"] == 2
    assert mapped["max_latents"] == base["z_index_dim"]
    backbone = PerceiverARBackbone(**mapped)
    params, _ = load_perceiver_ar_checkpoint(checkpoint)
    channels = base["num_z_channels"]
    pos_embs = np.random.default_rng(0).normal(size=(2, channels))
    params = dict(params, **{"perceiver_ar/~/z_pos_enc/pos_embs": pos_embs})
    assign_weights(backbone, conversion.deepmind_rows(backbone), params)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone.latent_position_embedding),
        pos_embs, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of"):
        conversion.deepmind_backbone_kwargs(
            dict(kwargs, z_index_dim=2 * base["z_index_dim"] + 1))


# --- krasserm -------------------------------------------------------------------


def test_krasserm_forward_matches_the_reference(krasserm_model):
    inputs = load_npz(KRASSERM, "inputs.npz")
    expected = load_npz(KRASSERM, "outputs.npz")
    outputs = conversion.run_krasserm_inputs(
        krasserm_model, {k: inputs[k] for k in
                         ("input_ids", "attention_mask", "prefix_len",
                          "num_latents")})
    assert_close(outputs["logits"], expected["logits"])
    assert_close(outputs["last_hidden_state"], expected["last_hidden_state"])


def test_krasserm_cached_greedy_generation_matches_the_reference(
        krasserm_model):
    inputs = load_npz(KRASSERM, "inputs.npz")
    expected = load_npz(KRASSERM, "outputs.npz")
    gen = {k: v for k, v in inputs.items() if k.startswith("gen_")}
    outputs = conversion.run_krasserm_inputs(krasserm_model, gen)
    np.testing.assert_array_equal(outputs["gen_sequences"],
                                  expected["gen_sequences"])
    assert_close(outputs["gen_step_logits"], expected["gen_step_logits"])


def test_krasserm_pytorch_bin_gives_the_same_model(krasserm_model, tmp_path):
    directory = tmp_path / "bin_only"
    shutil.copytree(os.path.join(KRASSERM, "checkpoint"), directory)
    os.remove(directory / "model.safetensors")
    from_bin = conversion.convert_krasserm(str(directory))
    for a, b in zip(from_bin.backbone.weights, krasserm_model.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


def test_krasserm_parameter_count_equals_the_state_dict(krasserm_model):
    from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir

    state = load_checkpoint_dir(os.path.join(KRASSERM, "checkpoint"))
    # inv_freq is a buffer, not a parameter; the embedding is tied.
    total = sum(int(np.prod(v.shape)) for k, v in state.items()
                if not k.endswith("inv_freq"))
    assert krasserm_model.count_params() == total


def test_krasserm_wrong_rotary_buffer_is_refused(tmp_path):
    from perceiver_keras.utils.hf_checkpoint import read_safetensors

    directory = tmp_path / "ckpt"
    shutil.copytree(os.path.join(KRASSERM, "checkpoint"), directory)
    os.remove(directory / "model.safetensors")
    state = read_safetensors(os.path.join(KRASSERM, "checkpoint",
                                          "model.safetensors"))
    name = "backend_model.input_adapter.frq_pos_encoding.inv_freq"
    assert name in state
    config = json.loads((directory / "config.json").read_text())
    config["model_config"]["abs_pos_emb"] = False  # rotates all channels
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="inv_freq"):
        conversion.convert_krasserm(str(directory))


# --- command line and presets ----------------------------------------------------


def _cli(argv):
    return load_script("convert_perceiver_ar").main(argv)


def test_cli_deepmind_then_from_preset(tmp_path):
    from keras_hub.models import CausalLM

    directory, _, checkpoint = deepmind_case("absolute_sinusoidal")
    preset, out = tmp_path / "preset", tmp_path / "outputs.npz"
    assert _cli([checkpoint, "--config", os.path.join(directory, "config.json"),
                 "--output", str(preset), "--inputs",
                 os.path.join(directory, "inputs.npz"),
                 "--save-outputs", str(out)]) == 0
    expected = load_npz(directory, "outputs.npz")
    valid = expected["latent_last_steps"] >= 0
    assert_close(load_npz(tmp_path, "outputs.npz")["logits"][valid],
                 expected["logits"][valid])
    loaded = CausalLM.from_preset(str(preset))
    inputs = load_npz(directory, "inputs.npz")
    logits = conversion.run_deepmind_inputs(loaded, inputs)["logits"]
    assert_close(logits[valid], expected["logits"][valid])


def test_cli_krasserm_then_from_preset(tmp_path):
    from keras_hub.models import CausalLM

    preset, out = tmp_path / "preset", tmp_path / "outputs.npz"
    assert _cli([os.path.join(KRASSERM, "checkpoint"), "--output",
                 str(preset), "--inputs", os.path.join(KRASSERM, "inputs.npz"),
                 "--save-outputs", str(out)]) == 0
    outputs, expected = load_npz(tmp_path, "outputs.npz"), load_npz(
        KRASSERM, "outputs.npz")
    assert sorted(outputs) == sorted(expected)
    for name in ("logits", "last_hidden_state", "gen_step_logits"):
        assert_close(outputs[name], expected[name])
    np.testing.assert_array_equal(outputs["gen_sequences"],
                                  expected["gen_sequences"])
    loaded = CausalLM.from_preset(str(preset))
    inputs = load_npz(KRASSERM, "inputs.npz")
    hidden = loaded.backbone(
        {"token_ids": inputs["input_ids"].astype("int32"),
         "padding_mask": inputs["attention_mask"] > 0},
        num_latents=int(inputs["num_latents"]))
    assert_close(loaded.backbone.token_logits(hidden), expected["logits"])


def test_cli_failed_conversion_leaves_no_preset(tmp_path, capsys):
    _, _, checkpoint = deepmind_case("rotary")
    preset = tmp_path / "preset"
    assert _cli([checkpoint, "--output", str(preset)]) == 1
    assert "--config" in capsys.readouterr().err
    assert not preset.exists() and os.listdir(tmp_path) == []


# --- the chunked cross-attention on the same checkpoints ------------------------


def chunked_copy(causal_lm, chunk_size):
    """`causal_lm` with its cross-attention streamed over `chunk_size` keys
    (7: the fixtures' contexts are not multiples, so the last chunk
    overlaps its predecessor)."""
    from perceiver_keras import PerceiverARBackbone, PerceiverARCausalLM

    backbone = PerceiverARBackbone.from_config(dict(
        causal_lm.backbone.get_config(), attention_implementation="chunked",
        key_value_chunk_size=chunk_size))
    backbone.set_weights(causal_lm.backbone.get_weights())
    return PerceiverARCausalLM(backbone=backbone)


@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_deepmind_chunked_cross_attention_matches_the_reference(
        deepmind_models, case):
    directory, _, _ = deepmind_case(case)
    inputs = load_npz(directory, "inputs.npz")
    assert inputs["inputs"].shape[1] % 7
    expected = load_npz(directory, "outputs.npz")
    outputs = conversion.run_deepmind_inputs(
        chunked_copy(deepmind_models[case], 7), inputs)
    valid = expected["latent_last_steps"] >= 0
    assert_close(outputs["logits"][valid], expected["logits"][valid])


def test_krasserm_chunked_cross_attention_matches_the_reference(
        krasserm_model):
    inputs = load_npz(KRASSERM, "inputs.npz")
    assert inputs["input_ids"].shape[1] % 7
    outputs = conversion.run_krasserm_inputs(
        chunked_copy(krasserm_model, 7), {
            k: inputs[k] for k in ("input_ids", "attention_mask",
                                   "prefix_len", "num_latents")})
    expected = load_npz(KRASSERM, "outputs.npz")
    assert_close(outputs["logits"], expected["logits"])
    assert_close(outputs["last_hidden_state"], expected["last_hidden_state"])
