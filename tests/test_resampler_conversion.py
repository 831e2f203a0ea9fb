"""Resampler weights from transformers' IDEFICS and Idefics2 checkpoints.

Tiny random IDEFICS / Idefics2 models are made here with transformers,
their parameters re-drawn large enough that every weight matters, saved
(`save_pretrained`, sharded, and `torch.save(state_dict)`), converted, and
compared with transformers' own resampler module on the same features.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import assert_close  # noqa: E402
from conftest import to_numpy  # noqa: E402
from harness import load_script  # noqa: E402
from perceiver_keras.conversion.resampler import convert_resampler  # noqa: E402
from perceiver_keras.conversion.resampler import load_resampler  # noqa: E402
from perceiver_keras.conversion.resampler import run_resampler  # noqa: E402
from perceiver_keras.models.resampler.resampler_encoder import (  # noqa: E402
    PerceiverResamplerEncoder,
)

IDEFICS_WIDTH = 24
IDEFICS2_WIDTH = 16


def randomize(model, seed):
    """Every parameter ~ N(0, 0.5) (norm scales around 1): transformers'
    init (latents of ones, std-0.02 linears) would hide wrong wiring."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.5
            is_scale = name.endswith("norm.weight") or ".ln.weight" in name
            p.copy_(noise + 1.0 if is_scale else noise)
    return model.eval()


def idefics_model():
    config = transformers.IdeficsConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, cross_layer_interval=1,
        use_resampler=True,
        vision_config=dict(
            embed_dim=IDEFICS_WIDTH, image_size=8, patch_size=4,
            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        ),
        perceiver_config=dict(
            resampler_n_latents=3, resampler_depth=2, resampler_n_heads=2,
            resampler_head_dim=5, qk_layer_norms_perceiver=True,
        ),
    )
    return randomize(transformers.IdeficsForVisionText2Text(config), 0)


def idefics2_model():
    config = transformers.Idefics2Config(
        text_config=dict(
            model_type="mistral", vocab_size=32, hidden_size=IDEFICS2_WIDTH,
            intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1,
        ),
        vision_config=dict(
            hidden_size=24, image_size=8, patch_size=4, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32,
        ),
        perceiver_config=dict(
            hidden_size=IDEFICS2_WIDTH, rms_norm_eps=1e-5,
            resampler_n_latents=3, resampler_depth=2, resampler_n_heads=4,
            resampler_head_dim=5, num_key_value_heads=2,
        ),
    )
    return randomize(transformers.Idefics2ForConditionalGeneration(config), 1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("resampler_checkpoints")
    idefics = idefics_model()
    idefics.save_pretrained(root / "idefics")
    # The same weights as `torch.save(state_dict)`: pytorch_model.bin.
    idefics.config.save_pretrained(root / "idefics_bin")
    torch.save(idefics.state_dict(), root / "idefics_bin" / "pytorch_model.bin")
    idefics2 = idefics2_model()
    idefics2.save_pretrained(root / "idefics2", max_shard_size="20KB")
    standalone = idefics2.model.connector.perceiver_resampler
    standalone.save_pretrained(root / "idefics2_perceiver")
    return {
        "root": root,
        "idefics": idefics.model.perceiver_resampler,
        "idefics2": standalone,
    }


def features(width, batch=3, length=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, width)).astype("float32")


def idefics_reference(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def idefics2_reference(module, x, mask):
    with torch.no_grad():
        return module(
            context=torch.from_numpy(x),
            attention_mask=torch.from_numpy(mask.astype("int64")),
        ).numpy()


@pytest.mark.parametrize("directory", ["idefics", "idefics_bin"])
def test_idefics_matches_transformers(checkpoints, directory):
    task = load_resampler(checkpoints["root"] / directory)
    assert task.backbone.qk_norm and task.backbone.num_key_value_heads is None
    x = features(IDEFICS_WIDTH)
    ref = idefics_reference(checkpoints["idefics"], x)
    assert_close(run_resampler(task, x)["latents"], ref)


def test_idefics_padded_features_match_unpadded(checkpoints):
    # transformers' IDEFICS takes no mask: compare each example, unpadded,
    # with the padded batch and a padding mask.
    task = load_resampler(checkpoints["root"] / "idefics")
    lengths = [7, 4, 1]
    x = features(IDEFICS_WIDTH)
    mask = np.arange(7)[None] < np.array(lengths)[:, None]
    x_padded = np.where(mask[..., None], x, 100.0).astype("float32")
    got = run_resampler(task, x_padded, mask)["latents"]
    for i, n in enumerate(lengths):
        ref = idefics_reference(checkpoints["idefics"], x[i:i + 1, :n])
        assert_close(got[i:i + 1], ref)


@pytest.mark.parametrize("directory", ["idefics2", "idefics2_perceiver"])
def test_idefics2_matches_transformers_with_mask(checkpoints, directory):
    task = load_resampler(checkpoints["root"] / directory)
    assert task.backbone.num_key_value_heads == 2
    assert task.backbone.norm_epsilon == 1e-5
    x = features(IDEFICS2_WIDTH)
    mask = np.ones((3, 7), dtype=bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    ref = idefics2_reference(checkpoints["idefics2"], x, mask)
    got = run_resampler(task, x, mask)["latents"]
    assert_close(got, ref)
    # The mask matters: without it the padded examples differ.
    unmasked = run_resampler(task, x)["latents"]
    assert np.abs(unmasked[1:] - ref[1:]).max() > 1e-2


def test_only_resampler_shards_are_read(checkpoints, tmp_path):
    source = checkpoints["root"] / "idefics2"
    with open(source / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    needed = {s for n, s in weight_map.items() if "perceiver_resampler." in n}
    assert needed != set(weight_map.values())  # the test means something
    copy = tmp_path / "partial"
    copy.mkdir()
    for name in ["config.json", "model.safetensors.index.json", *needed]:
        shutil.copy(source / name, copy / name)
    task = load_resampler(copy)
    x = features(IDEFICS2_WIDTH)
    mask = np.ones((3, 7), dtype=bool)
    ref = idefics2_reference(checkpoints["idefics2"], x, mask)
    assert_close(run_resampler(task, x)["latents"], ref)


def test_command_line_round_trip(checkpoints, tmp_path, capsys):
    script = load_script("convert_resampler")
    x = features(IDEFICS2_WIDTH, seed=3)
    mask = np.ones((3, 7), dtype="int64")
    mask[0, 5:] = 0
    np.savez(tmp_path / "inputs.npz", features=x, attention_mask=mask)
    preset = tmp_path / "preset"
    status = script.main([
        str(checkpoints["root"] / "idefics2"), "--output", str(preset),
        "--inputs", str(tmp_path / "inputs.npz"),
        "--save-outputs", str(tmp_path / "outputs.npz"),
    ])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "ok" in printed
    ref = idefics2_reference(checkpoints["idefics2"], x, mask)
    with np.load(tmp_path / "outputs.npz") as outputs:
        assert sorted(outputs) == ["latents"]
        assert_close(outputs["latents"], ref)
    reloaded = PerceiverResamplerEncoder.from_preset(str(preset))
    got = reloaded({"inputs": x, "padding_mask": mask.astype(bool)})
    assert_close(to_numpy(got), ref)


def test_failed_conversion_leaves_no_preset(checkpoints, tmp_path):
    source = tmp_path / "broken"
    shutil.copytree(checkpoints["root"] / "idefics", source)
    config = json.loads((source / "config.json").read_text())
    config["perceiver_config"]["resampler_depth"] = 3  # one block too many
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="absent from the checkpoint"):
        convert_resampler(source, tmp_path / "preset")
    assert not os.path.exists(tmp_path / "preset")
    config["use_resampler"] = False
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_resampler"):
        load_resampler(source)
