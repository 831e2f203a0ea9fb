"""Built-in HiP architectures (DeepMind's VARIANTS): parameter counts
against a closed form written from the shapes DeepMind's code creates."""

import json
import os

import pytest

from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.hip.hip_classifier import HiPClassifier
from perceiver_keras.models.hip.hip_presets import PRESET_VARIANTS
from perceiver_keras.models.hip.hip_presets import VARIANTS

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hip")


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def cross_attention(cq, ckv, widening):  # HiPCrossAttention
    return (4 * cq + 2 * ckv + linear(cq, ckv) + 2 * linear(ckv, ckv)
            + linear(ckv, cq) + linear(cq, widening * cq)
            + linear(widening * cq, cq))


def self_attention(c, widening):
    return 4 * c + 4 * linear(c, c) + linear(c, widening * c) + linear(
        widening * c, c)


def deepmind_count(kw, modalities, labels=()):
    """Parameters of DeepMind's HiP / HiPClassBottleneck / PerceiverIO."""
    per_block = lambda k: [kw[k]] if isinstance(kw[k], int) else kw[k]
    groups = kw.get("num_groups") or [1]
    n_idx, ch = per_block("z_index_dim"), per_block("num_z_channels")
    sa, sa_w = (per_block("num_self_attends_per_block"),
                per_block("self_attend_widening_factor"))
    ca_w = per_block("cross_attend_widening_factor")
    e, n = kw["num_embedding_channels"], len(n_idx)
    project = kw.get("num_position_encoding_channels") not in (None, e)
    total = 0
    for name, m, c in modalities:
        if name not in labels:
            total += linear(c, e) + m * e + (e * e if project else 0) + linear(e, c)
    proc = n // 2
    for i in range(n):
        c_in = e if i == 0 else ch[i - 1]
        total += groups[i] * n_idx[i] * ch[i]
        if i > proc and ch[n - 1 - i] != ch[i]:
            total += linear(ch[n - 1 - i], ch[i])
        total += cross_attention(ch[i], c_in, ca_w[i])
        total += sa[i] * self_attention(ch[i], sa_w[i])
    total += cross_attention(e, ch[-1], 1)  # reconstruction head
    if labels:
        c_in = ch[proc - 1]
        total += cross_attention(c_in, ch[proc], 1)
        for name, m, c in modalities:
            if name in labels:
                total += linear(c, c_in) + m * c_in + linear(c_in, c)
    return total


@pytest.mark.parametrize("case", ["hip3_mae", "hipcb3_cls"])
def test_closed_form_counts_deepmind_fixtures(case):
    with open(os.path.join(FIXTURES, case, "config.json")) as f:
        config = json.load(f)
    kw = config["constructor_kwargs"]
    shapes = config["input_shapes"]
    modalities = [[n, shapes[n][1], shapes[n][2]]
                  for n in config["input_order"]]
    assert deepmind_count(kw, modalities, kw.get("label_modalities", ())) \
        == config["num_params"]


SMALL = ["hip_mini", "hip_io_mini", "hip_256"]


@pytest.mark.parametrize("preset", SMALL)
def test_preset_builds_deepmind_architecture(preset):
    # A short input keeps the position encodings small; counts are exact
    # for any modalities.
    modalities = [["image", 4096, 3], ["audio", 1000, 1]]
    if preset == "hip_io_mini":
        modalities = [["image", 4096, 3]]
    backbone = HiPBackbone.from_preset(preset, load_weights=False,
                                       modalities=modalities)
    variant = VARIANTS[PRESET_VARIANTS[preset]]
    assert backbone.count_params() == deepmind_count(variant, modalities)


def test_classifier_preset_and_default_modalities():
    classifier = HiPClassifier.from_preset("hip_mini", load_weights=False,
                                           num_classes=7)
    backbone = classifier.backbone
    assert backbone.modalities == [["image", 50176, 3], ["label", 1, 7]]
    assert classifier.num_classes == 7
    assert backbone.count_params() == deepmind_count(
        VARIANTS["Mini"], backbone.modalities, ["label"])


def test_presets_have_no_weights():
    with pytest.raises(ValueError, match="load_weights=False"):
        HiPBackbone.from_preset("hip_16")
