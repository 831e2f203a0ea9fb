"""HiP's training-only features, as DeepMind's code has them: dropout,
drop-path (stochastic depth without rescaling), processor latent
subsampling at training time. (MAE masking ratio and per-modality masking:
tests/test_hip_tasks.py.) Each is off at evaluation."""

import keras
import numpy as np
import pytest

from harness import to_numpy
from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.hip.hip_layers import HiPBlock
from perceiver_keras.models.hip.hip_layers import HiPMLP
from perceiver_keras.models.hip.hip_layers import drop_path

rng = np.random.default_rng(0)


def test_mlp_dropout_zeroes_and_rescales_its_output():
    mlp = HiPMLP(widening_factor=2, dropout=0.5)
    x = rng.normal(size=(64, 4, 8)).astype("float32")
    evaluated = to_numpy(mlp(x, training=False))
    trained = to_numpy(mlp(x, training=True))
    kept = trained != 0
    # Inverted dropout: kept values are the eval values / (1 - 0.5).
    np.testing.assert_allclose(trained[kept], 2 * evaluated[kept], rtol=1e-5)
    assert 0.4 < kept.mean() < 0.6, kept.mean()
    np.testing.assert_array_equal(to_numpy(mlp(x)), evaluated)


def test_drop_path_drops_whole_examples_without_rescaling():
    x = keras.ops.ones((4000, 2, 3, 5))  # inside a layer: a tensor
    seed = keras.random.SeedGenerator(1)
    y = to_numpy(drop_path(x, 0.25, seed, training=True))
    per_example = y.reshape(len(y), -1)
    # Each example is kept whole (all ones: DeepMind does not rescale) or
    # dropped whole (all zeros), kept with probability 1 - rate.
    assert set(np.unique(per_example)) <= {0.0, 1.0}
    np.testing.assert_array_equal(per_example.min(1), per_example.max(1))
    assert abs(per_example[:, 0].mean() - 0.75) < 0.03
    np.testing.assert_array_equal(
        to_numpy(drop_path(x, 0.25, seed, training=False)), to_numpy(x)
    )


def test_drop_path_in_the_backbone_only_when_training():
    kwargs = dict(
        modalities={"x": (8, 2)}, num_groups=[2, 1, 2],
        num_self_attends_per_block=[1, 1, 1], z_index_dim=[2, 2, 2],
        num_z_channels=[4, 4, 4], num_self_attend_heads=[1, 1, 1],
        num_embedding_channels=4,
    )
    plain = HiPBackbone(**kwargs)
    dropped = HiPBackbone(**kwargs, drop_path_rate=1.0, dropout_prob=0.3)
    dropped.set_weights(plain.get_weights())
    x = {"x": rng.normal(size=(3, 8, 2)).astype("float32")}
    expected = to_numpy(plain(x))
    for key, value in to_numpy(dropped(x)).items():
        np.testing.assert_array_equal(value, expected[key])
    # Rate 1 drops every self-attention branch: block 1 (the processor,
    # one self-attention) is then its cross-attention alone.
    block = dropped.get_layer("block_1")
    trained = to_numpy(dropped(x, training=True))
    cross = to_numpy(block.cross_attention(
        block._latent_queries(3, False), keras.ops.convert_to_tensor(
            to_numpy(dropped.get_layer("regroup_1")(trained["block_0"]))
        )))
    np.testing.assert_allclose(trained["block_1"], cross, atol=1e-6)


def test_processor_latent_subsampling_at_training_time():
    block = HiPBlock(num_groups=1, index_dim=8, num_channels=4,
                     num_self_attend_layers=0, num_self_attend_heads=1,
                     self_attend_widening_factor=1, num_cross_attend_heads=1,
                     cross_attend_widening_factor=1, index_dim_train=3)
    x = rng.normal(size=(5, 1, 10, 6)).astype("float32")
    evaluated = to_numpy(block(x, training=False))
    trained = to_numpy(block(x, training=True))
    assert evaluated.shape == (5, 1, 8, 4) and trained.shape == (5, 1, 3, 4)
    # Without self-attention each latent's output depends on that latent
    # alone: a training output row is the eval output of the latent drawn,
    # 3 distinct latents per example, the draw differing between examples.
    drawn = []
    for b in range(5):
        diff = np.abs(trained[b, 0][:, None] - evaluated[b, 0][None]).max(-1)
        rows = diff.argmin(1)
        # Float32 rounding differs between a 3- and an 8-latent batch.
        np.testing.assert_allclose(diff.min(1), 0, atol=1e-5)
        assert len(set(rows)) == 3
        drawn.append(tuple(sorted(rows)))
    assert len(set(drawn)) > 1, drawn


def test_backbone_subsamples_the_processor_latents_only_when_training():
    backbone = HiPBackbone(
        modalities={"x": (8, 2)}, num_groups=[2, 1, 2],
        num_self_attends_per_block=[1, 1, 1], z_index_dim=[2, 8, 2],
        num_z_channels=[4, 4, 4], num_self_attend_heads=[1, 1, 1],
        num_embedding_channels=4, processor_index_dim_train=4,
    )
    x = {"x": rng.normal(size=(2, 8, 2)).astype("float32")}
    assert to_numpy(backbone(x))["block_1"].shape == (2, 1, 8, 4)
    trained = to_numpy(backbone(x, training=True))
    assert trained["block_1"].shape == (2, 1, 4, 4)
    assert trained["reconstruction/x"].shape == (2, 8, 2)
    with pytest.raises(ValueError, match="index_dim_train"):
        HiPBlock(num_groups=1, index_dim=2, num_channels=4,
                 num_self_attend_layers=0, num_self_attend_heads=1,
                 self_attend_widening_factor=1, num_cross_attend_heads=1,
                 cross_attend_widening_factor=1, index_dim_train=3)
