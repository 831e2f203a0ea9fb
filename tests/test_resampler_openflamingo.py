"""OpenFlamingo's resampler from a `torch.save` state dict with its names.

OpenFlamingo is not installed here; its forward pass is transcribed below
in torch, reading the state dict directly (so the table's mapping,
including the split of the fused `to_kv`, is what is tested).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
from perceiver_keras.conversion.resampler import convert_resampler  # noqa: E402
from perceiver_keras.conversion.resampler import load_openflamingo  # noqa: E402
from perceiver_keras.conversion.resampler import run_resampler  # noqa: E402

DIM, HEADS, DIM_HEAD, LATENTS, DEPTH, FRAMES, MEDIA = 8, 2, 3, 3, 2, 2, 3


def state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, base=0.0):
        return base + 0.5 * torch.randn(shape, generator=g)

    inner = HEADS * DIM_HEAD
    state = {"perceiver.latents": rand(LATENTS, DIM),
             "perceiver.frame_embs": rand(FRAMES, DIM),
             "perceiver.media_time_embs": rand(MEDIA, 1, DIM)}
    for i in range(DEPTH):
        p = f"perceiver.layers.{i}"
        for norm in (f"{p}.0.norm_media", f"{p}.0.norm_latents", f"{p}.1.0"):
            state[f"{norm}.weight"] = rand(DIM, base=1.0)
            state[f"{norm}.bias"] = rand(DIM)
        state[f"{p}.0.to_q.weight"] = rand(inner, DIM)
        state[f"{p}.0.to_kv.weight"] = rand(2 * inner, DIM)
        state[f"{p}.0.to_out.weight"] = rand(DIM, inner)
        state[f"{p}.1.1.weight"] = rand(4 * DIM, DIM)
        state[f"{p}.1.3.weight"] = rand(DIM, 4 * DIM)
    state["perceiver.norm.weight"] = rand(DIM, base=1.0)
    state["perceiver.norm.bias"] = rand(DIM)
    # Other Flamingo tensors the converter must skip.
    state["lang_encoder.gated_cross_attn_layers.0.attn_gate"] = rand(1)
    state["vision_encoder.proj"] = rand(DIM, DIM)
    return state


def openflamingo_forward(state, x):
    """OpenFlamingo's `PerceiverResampler.forward`, x: [b, T, F, v, D]."""
    s = {k[len("perceiver."):]: v for k, v in state.items()
         if k.startswith("perceiver.")}
    ln = torch.nn.functional.layer_norm

    def norm(name, t):
        return ln(t, (DIM,), s[f"{name}.weight"], s[f"{name}.bias"], 1e-5)

    b, T, F, v, _ = x.shape
    x = x + s["frame_embs"][:F][None, None, :, None]
    x = x.reshape(b, T, F * v, DIM) + s["media_time_embs"][:T]
    latents = s["latents"].expand(b, T, LATENTS, DIM)
    for i in range(DEPTH):
        p = f"layers.{i}"
        media, lat = norm(f"{p}.0.norm_media", x), norm(f"{p}.0.norm_latents", latents)
        q = lat @ s[f"{p}.0.to_q.weight"].T
        k, val = (torch.cat([media, lat], dim=-2) @ s[f"{p}.0.to_kv.weight"].T
                  ).chunk(2, dim=-1)

        def heads(t):
            return t.reshape(*t.shape[:-1], HEADS, DIM_HEAD).transpose(-2, -3)

        q, k, val = heads(q) * DIM_HEAD ** -0.5, heads(k), heads(val)
        attn = (q @ k.transpose(-1, -2)).softmax(dim=-1)
        out = (attn @ val).transpose(-2, -3).reshape(b, T, LATENTS, -1)
        latents = latents + out @ s[f"{p}.0.to_out.weight"].T
        h = torch.nn.functional.gelu(norm(f"{p}.1.0", latents) @ s[f"{p}.1.1.weight"].T)
        latents = latents + h @ s[f"{p}.1.3.weight"].T
    return norm("norm", latents)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("openflamingo") / "checkpoint.pt"
    state = state_dict()
    torch.save(state, path)
    return path, state


def test_openflamingo_checkpoint_matches_its_forward(checkpoint, tmp_path):
    path, state = checkpoint
    task = load_openflamingo(path, num_heads=HEADS)
    layer = task.backbone.resampler
    assert (layer.max_num_frames, layer.max_num_media) == (FRAMES, MEDIA)
    x = np.random.default_rng(0).normal(size=(2, 2, 2, 4, DIM)).astype("float32")
    with torch.no_grad():
        ref = openflamingo_forward(state, torch.from_numpy(x)).numpy()
    # Media input goes to the layer directly (the task takes [B, M, C]).
    assert_close(layer(x), ref)
    # A [B, M, C] set is one medium of one frame.
    single = x[:, :1, :1]
    with torch.no_grad():
        ref_single = openflamingo_forward(state, torch.from_numpy(single))
    got = run_resampler(task, single[:, 0, 0])["latents"]
    assert_close(got, ref_single.numpy()[:, 0])


def test_openflamingo_wrong_head_count_is_refused(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="num_heads"):
        load_openflamingo(path, num_heads=4)
    # The CLI's default (8 heads) does not divide this tiny model's 6.
    with pytest.raises(ValueError, match="num_heads"):
        convert_resampler(str(path), tmp_path / "preset")
    assert not (tmp_path / "preset").exists()
