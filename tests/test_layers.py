import keras
import numpy as np
import pytest

import numpy_reference as ref
from conftest import assert_close
from conftest import to_numpy
from perceiver_keras.layers import FourierPositionEncoding
from perceiver_keras.layers import PerceiverArrayAdapter
from perceiver_keras.layers import PerceiverAttention
from perceiver_keras.layers import PerceiverClassificationDecoder
from perceiver_keras.layers import PerceiverCrossAttentionBlock
from perceiver_keras.layers import PerceiverImageAdapter
from perceiver_keras.layers import PerceiverMeanPoolDecoder
from perceiver_keras.layers import PerceiverQueryDecoder
from perceiver_keras.layers import PerceiverSelfAttentionBlock
from perceiver_keras.layers import PerceiverTokenAdapter
from perceiver_keras.layers import TrainablePositionEncoding
from perceiver_keras.layers import fourier_features
from perceiver_keras.layers import space_to_depth
from perceiver_keras.layers.position_encoding import subsampled_positions

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.normal(size=shape).astype("float32")


def randomize(layer, scale=0.5):
    """Random non-trivial values in every weight (biases and norms too)."""
    for w in layer.weights:
        w.assign(randn(*w.shape) * scale + (1.0 if "gamma" in w.path else 0))


def norm_params(norm):
    return (to_numpy(norm.gamma).astype(float), to_numpy(norm.beta).astype(float))


def mlp_ref(mlp, x, approximate):
    h = ref.gelu(ref.dense(x, to_numpy(mlp.hidden_dense.kernel),
                           to_numpy(mlp.hidden_dense.bias)), approximate)
    return ref.dense(h, to_numpy(mlp.output_dense.kernel),
                     to_numpy(mlp.output_dense.bias))


# --- attention ---------------------------------------------------------


@pytest.mark.parametrize("num_heads,qk,v,out", [(1, None, None, None),
                                                (4, 16, 24, 12)])
def test_attention_matches_numpy(num_heads, qk, v, out):
    layer = PerceiverAttention(num_heads, qk, v, out)
    q, kv = randn(2, 5, 10), randn(2, 7, 8)
    layer.build(q.shape, kv.shape)
    randomize(layer)
    expected = ref.attention(q, kv, ref.attention_weights(layer), num_heads)
    assert expected.shape[-1] == (out or 10)
    assert_close(layer(q, kv), expected, 1e-5)


def test_attention_masks_and_fully_masked_rows():
    layer = PerceiverAttention(num_heads=2, qk_channels=8)
    q, kv = randn(2, 4, 6), randn(2, 5, 6)
    layer.build(q.shape, kv.shape)
    randomize(layer)
    key_mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    query_mask = np.array([[1, 0, 1, 1], [1, 1, 1, 1]], bool)
    mask = query_mask[:, :, None] & key_mask[:, None, :]
    expected = ref.attention(q, kv, ref.attention_weights(layer), 2, mask)
    got = layer(q, kv, query_mask=query_mask, key_mask=key_mask)
    assert_close(got, expected, 1e-5)
    # Fully masked rows attend to nothing: only the output bias remains,
    # not the projection of a uniform average of the values.
    bias = to_numpy(layer.output_dense.bias)
    got = to_numpy(got)
    np.testing.assert_allclose(got[0, 1], bias, atol=1e-6)
    np.testing.assert_allclose(got[1], np.broadcast_to(bias, (4, 6)), atol=1e-6)
    # Masked keys do not influence the result.
    kv2 = kv.copy()
    kv2[0, [2, 4]] = 100.0
    got2 = layer(q, kv2, query_mask=query_mask, key_mask=key_mask)
    np.testing.assert_allclose(to_numpy(got2)[0], got[0], atol=1e-5)


def test_attention_rejects_indivisible_heads():
    layer = PerceiverAttention(num_heads=3, qk_channels=8)
    with pytest.raises(ValueError, match="qk_channels"):
        layer.build((1, 2, 8), (1, 3, 8))


# --- blocks ------------------------------------------------------------


@pytest.mark.parametrize("approximate", [True, False])
@pytest.mark.parametrize("residual", [True, False])
def test_cross_attention_block_matches_numpy(approximate, residual):
    block = PerceiverCrossAttentionBlock(
        num_heads=2, qk_channels=8, v_channels=12, widening_factor=2,
        use_query_residual=residual, gelu_approximate=approximate,
    )
    q, kv = randn(2, 3, 10), randn(2, 6, 5)
    key_mask = rng.random((2, 6)) > 0.3
    block.build(q.shape, kv.shape)
    randomize(block)
    attn = ref.attention(
        ref.layer_norm(q, *norm_params(block.query_norm)),
        ref.layer_norm(kv, *norm_params(block.key_value_norm)),
        ref.attention_weights(block.attention), 2,
        np.broadcast_to(key_mask[:, None, :], (2, 3, 6)),
    )
    x = q + attn if residual else attn
    x = x + mlp_ref(block.mlp, ref.layer_norm(x, *norm_params(block.mlp_norm)),
                    approximate)
    assert_close(block(q, kv, key_mask=key_mask), x, 1e-5)


def test_gelu_variants_differ():
    """The two checkpoint families' GELUs are distinguishable."""
    x = np.linspace(-3, 3, 50)
    assert np.abs(ref.gelu(x, True) - ref.gelu(x, False)).max() > 1e-4


def test_self_attention_block_matches_numpy():
    block = PerceiverSelfAttentionBlock(num_heads=4, widening_factor=1)
    x = randn(2, 6, 16)
    block.build(x.shape)
    randomize(block)
    h = x + ref.attention(
        ref.layer_norm(x, *norm_params(block.attention_norm)),
        ref.layer_norm(x, *norm_params(block.attention_norm)),
        ref.attention_weights(block.attention), 4,
    )
    h = h + mlp_ref(block.mlp, ref.layer_norm(h, *norm_params(block.mlp_norm)),
                    True)
    assert_close(block(x), h, 1e-5)


def test_layer_norm_epsilon_is_1e_5():
    block = PerceiverSelfAttentionBlock()
    block.build((1, 2, 4))
    assert block.attention_norm.epsilon == 1e-5
    assert block.mlp_norm.epsilon == 1e-5


# --- positions ---------------------------------------------------------


@pytest.mark.parametrize(
    "dims,bands,res,concat,sine",
    [((7,), 4, (7,), True, False), ((3, 5), 3, (16, 20), True, False),
     ((2, 3, 4), 2, (2, 3, 4), False, True)],
)
def test_fourier_features_match_formula(dims, bands, res, concat, sine):
    expected = ref.fourier_features(dims, bands, res, concat, sine)
    got = fourier_features(dims, bands, res, concat, sine)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_fourier_layer_broadcasts_and_caches():
    layer = FourierPositionEncoding(num_bands=3, max_resolution=(8, 8))
    out = to_numpy(layer(np.zeros((2, 4, 5, 1), "float32")))
    assert out.shape == (2, 20, 2 * (2 * 3 + 1))
    np.testing.assert_allclose(out[1], ref.fourier_features((4, 5), 3, (8, 8)),
                               atol=1e-6)
    assert layer.features_for((4, 5)) is layer.features_for((4, 5))


def test_subsampled_positions_formula():
    pos = subsampled_positions([0, 5, 11], (3, 4))
    np.testing.assert_allclose(pos, [[-1, -1], [-1 + 2 / 3, -0.5],
                                     [-1 + 4 / 3, 0.5]])


def test_trainable_position_encoding_init_and_broadcast():
    layer = TrainablePositionEncoding(4000, 8, init_scale=0.02)
    out = to_numpy(layer(np.zeros((3, 1))))
    assert out.shape == (3, 4000, 8)
    np.testing.assert_array_equal(out[0], out[2])
    std = to_numpy(layer.embeddings).std()
    assert 0.01 < std < 0.02  # truncated normal with stddev 0.02
    assert np.abs(to_numpy(layer.embeddings)).max() <= 0.04 + 1e-6


# --- adapters ----------------------------------------------------------


def test_array_adapter_concatenates_fourier_positions():
    adapter = PerceiverArrayAdapter(num_bands=2, max_resolution=(10,))
    x = randn(2, 6, 3)
    out = to_numpy(adapter(x))
    np.testing.assert_allclose(out[..., :3], x)
    np.testing.assert_allclose(out[0, :, 3:], ref.fourier_features((6,), 2, (10,)),
                               atol=1e-6)
    assert adapter.compute_output_shape((None, 6, 3)) == (None, 6, 3 + 5)


def test_array_adapter_adds_projected_trainable_positions():
    adapter = PerceiverArrayAdapter(
        position_encoding="trainable", position_channels=4, project_pos_dim=3,
        concat_or_add_pos="add",
    )
    x = randn(2, 2, 3, 3)
    out = to_numpy(adapter(x))
    pos = to_numpy(adapter.positions.embeddings)
    proj = pos @ to_numpy(adapter.position_projection.kernel) + to_numpy(
        adapter.position_projection.bias)
    np.testing.assert_allclose(out, x.reshape(2, 6, 3) + proj, atol=1e-6)


def test_space_to_depth_layout():
    x = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    got = to_numpy(space_to_depth(x, 2))
    expected = x.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5)
    np.testing.assert_array_equal(got, expected.reshape(2, 2, 3, 12))
    v = np.arange(2 * 4 * 4 * 4, dtype="float32").reshape(1, 2, 4, 4, 4)
    got = to_numpy(space_to_depth(v, 2, 2))
    exp = v.reshape(1, 1, 2, 2, 2, 2, 2, 4).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    np.testing.assert_array_equal(got, exp.reshape(1, 1, 2, 2, 32))


# "symmetric": the former name of "pad_then_valid_pool", kept for saved configs.
@pytest.mark.parametrize("padding,grid", [
    ("same", 56), ("pad_then_valid_pool", 55), ("symmetric", 55),
])
def test_conv_stem_grid_matches_checkpoint_families(padding, grid):
    adapter = PerceiverImageAdapter(
        prep_type="conv", spatial_downsample=4, num_channels=4,
        conv_padding=padding, num_bands=2, max_resolution=(grid, grid),
    )
    out = adapter(np.ones((1, 224, 224, 3), "float32"))
    assert tuple(out.shape) == (1, grid * grid, 4 + 2 * 5)


def test_conv_stem_same_padding_is_tf_same():
    """SAME pads 2 top/left and 3 bottom/right for a 7x7/2 conv on 224."""
    adapter = PerceiverImageAdapter(
        prep_type="conv", spatial_downsample=4, num_channels=1,
        position_encoding=None,
    )
    x = randn(1, 16, 16, 1)
    adapter.build(x.shape)
    kernel = randn(7, 7, 1, 1)
    adapter.conv.kernel.assign(kernel)
    conv = to_numpy(adapter.conv(x))[0, :, :, 0]
    padded = np.pad(x[0, :, :, 0], ((2, 3), (2, 3)))
    expected = np.array([[np.sum(padded[2 * i:2 * i + 7, 2 * j:2 * j + 7]
                                 * kernel[:, :, 0, 0]) for j in range(8)]
                         for i in range(8)])
    np.testing.assert_allclose(conv, expected, atol=1e-5)


def test_token_adapter_adds_positions():
    adapter = PerceiverTokenAdapter(262, 8, 16)
    ids = np.array([[1, 2, 3], [7, 8, 261]])
    out = to_numpy(adapter(ids))
    emb = to_numpy(adapter.token_embedding.embeddings)
    pos = to_numpy(adapter.positions.embeddings)
    np.testing.assert_allclose(out, emb[ids] + pos[None, :3], atol=1e-6)


# --- decoders ----------------------------------------------------------


def test_query_decoder_with_fourier_queries_matches_block():
    decoder = PerceiverQueryDecoder(
        output_index_dims=(3, 2), query_encoding="fourier", num_bands=2,
        output_channels=5, num_heads=1,
    )
    latents = randn(2, 4, 8)
    out = to_numpy(decoder(latents))
    queries = np.broadcast_to(fourier_features((3, 2), 2, None), (2, 6, 10))
    block_out = to_numpy(decoder.cross_attention(queries, latents))
    expected = block_out @ to_numpy(decoder.output_dense.kernel) + to_numpy(
        decoder.output_dense.bias)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_classification_and_mean_pool_decoders():
    latents = randn(2, 4, 8)
    clf = PerceiverClassificationDecoder(num_classes=3)
    assert tuple(clf(latents).shape) == (2, 3)
    pool = PerceiverMeanPoolDecoder(3)
    out = to_numpy(pool(latents))
    h = ref.layer_norm(latents.mean(1), *norm_params(pool.norm))
    expected = h @ to_numpy(pool.output_dense.kernel) + to_numpy(
        pool.output_dense.bias)
    np.testing.assert_allclose(out, expected, atol=1e-5)


# --- config round trip and dtype policies ------------------------------

LAYERS = [
    lambda: PerceiverAttention(2, 8, 4, 6, attention_dropout=0.1),
    lambda: PerceiverCrossAttentionBlock(num_heads=2, qk_channels=8,
                                         use_query_residual=False,
                                         gelu_approximate=False),
    lambda: PerceiverSelfAttentionBlock(num_heads=2, dropout=0.1),
    lambda: FourierPositionEncoding(5, (9, 9), sine_only=True),
    lambda: TrainablePositionEncoding(3, 4, 0.1),
    lambda: PerceiverArrayAdapter("trainable", position_channels=3,
                                  project_pos_dim=5),
    lambda: PerceiverImageAdapter("conv", 4, num_channels=8,
                                  conv_padding="pad_then_valid_pool", num_bands=3),
    lambda: PerceiverImageAdapter("patches", 2, 2, num_channels=8,
                                  conv_after_patching=True),
    lambda: PerceiverTokenAdapter(262, 8, 16),
    lambda: PerceiverQueryDecoder((4,), "trainable", output_channels=2),
    lambda: PerceiverClassificationDecoder(7, use_query_residual=False),
    lambda: PerceiverMeanPoolDecoder(3),
]


@pytest.mark.parametrize("make", LAYERS)
def test_get_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_close_to_float32(policy):
    q, kv = randn(2, 3, 8), randn(2, 5, 8)
    block32 = PerceiverCrossAttentionBlock(num_heads=2)
    block32.build(q.shape, kv.shape)
    block16 = PerceiverCrossAttentionBlock(num_heads=2, dtype=policy)
    block16.build(q.shape, kv.shape)
    for a, b in zip(block16.weights, block32.weights):
        a.assign(to_numpy(b))
    out16 = block16(q, kv, key_mask=np.array([[1, 1, 0, 0, 0]] * 2, bool))
    assert keras.backend.standardize_dtype(out16.dtype) == policy.split("_")[1]
    out32 = block32(q, kv, key_mask=np.array([[1, 1, 0, 0, 0]] * 2, bool))
    tol = 0.05 if "bfloat" in policy else 0.01
    np.testing.assert_allclose(to_numpy(out16).astype("float32"),
                               to_numpy(out32), atol=tol * 10, rtol=tol)
    assert all(w.dtype == "float32" for w in block16.weights)


def test_fourier_in_graph_path_matches_cached_features():
    """Used when a traced graph sees varying sizes; same numbers."""
    layer = FourierPositionEncoding(num_bands=4, max_resolution=(12, 10))
    got = to_numpy(layer._features_in_graph((6, 5)))
    np.testing.assert_allclose(got, fourier_features((6, 5), 4, (12, 10)),
                               atol=2e-6)
