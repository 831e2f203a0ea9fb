"""Chunked (streaming) and fused attention against the plain path.

Values and gradients (through each backend's own autodiff) must agree within
1e-5 relative, masks included: fully masked rows, masked queries, and a key
count that is not a multiple of the chunk size.
"""

import keras
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras import PerceiverArrayAdapter
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras.layers import PerceiverAttention
from perceiver_keras.layers import PerceiverCrossAttentionBlock
from perceiver_keras.layers import PerceiverSelfAttentionBlock
from perceiver_keras.layers import chunked_attention

BACKEND = keras.backend.backend()
rng = np.random.default_rng(3)


def randn(*shape):
    return rng.normal(size=shape).astype("float32")


def value_and_grads(loss_fn, inputs, variables):
    """`loss_fn(*inputs)`, and its gradients w.r.t. inputs and variables.

    Uses the backend's own autodiff (jax.grad, tf.GradientTape,
    torch.autograd), as training does.
    """
    if BACKEND == "jax":
        import jax

        def pure(values, *xs):
            with keras.StatelessScope(state_mapping=zip(variables, values)):
                return loss_fn(*xs)

        values = [v.value for v in variables]
        argnums = tuple(range(len(inputs) + 1))
        # Compiled once: op-by-op dispatch of the loops is slow in JAX.
        grad_fn = jax.jit(jax.value_and_grad(pure, argnums))
        loss, grads = grad_fn(values, *inputs)
        return loss, list(grads[1:]) + list(grads[0])
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(x) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = loss_fn(*xs)
        return loss, tape.gradient(loss, xs + list(variables))
    if BACKEND == "torch":
        import torch

        xs = [torch.tensor(x, requires_grad=True) for x in inputs]
        for v in variables:
            v.value.grad = None
        loss = loss_fn(*xs)
        loss.backward()
        return loss.detach(), [x.grad for x in xs] + [
            v.value.grad for v in variables
        ]
    pytest.skip(f"no autodiff on {BACKEND}")


def assert_same_grads(grads, expected, rtol=1e-5):
    """Each gradient within `rtol` of the largest gradient entry.

    Some gradients are zero in exact arithmetic (the key bias: softmax does
    not see a per-row constant); their round-off only compares to the rest.
    """
    grads = [to_numpy(g) for g in grads]
    expected = [to_numpy(e) for e in expected]
    assert len(grads) == len(expected)
    scale = max(1.0, max(np.abs(e).max() for e in expected))
    for g, e in zip(grads, expected):
        assert g.shape == e.shape
        diff = np.abs(g - e).max()
        assert diff <= rtol * scale, f"max|diff|={diff:.3g}, scale {scale:.3g}"


def masks(batch, num_queries, num_keys):
    """Key mask with a fully masked example; query mask with masked rows."""
    key_mask = rng.random((batch, num_keys)) > 0.4
    key_mask[0, :3] = True
    key_mask[1] = False  # every query of example 1 has no key
    query_mask = np.ones((batch, num_queries), bool)
    query_mask[0, 1] = query_mask[2, -1] = False
    return query_mask, key_mask


def twin_layers(make, build_args, **options):
    """A plain layer and a copy with other options, sharing weights."""
    plain = make(attention_implementation="plain")
    plain.build(*build_args)
    for w in plain.weights:
        w.assign(randn(*w.shape) * 0.5 + (1.0 if "gamma" in w.path else 0.0))
    other = make(**options)
    other.build(*build_args)
    other.set_weights(plain.get_weights())
    return plain, other


def check_against_plain(make, inputs, call, rtol=1e-5, **options):
    """Same outputs and gradients for the plain layer and `options`."""
    plain, other = twin_layers(make, [x.shape for x in inputs], **options)
    out_plain = call(plain, *inputs)
    assert_close(call(other, *inputs), to_numpy(out_plain), rtol)
    cotangent = keras.ops.convert_to_tensor(randn(*out_plain.shape))

    def loss_of(layer):
        return lambda *xs: keras.ops.sum(call(layer, *xs) * cotangent)

    loss, grads = value_and_grads(
        loss_of(plain), inputs, plain.trainable_variables
    )
    loss2, grads2 = value_and_grads(
        loss_of(other), inputs, other.trainable_variables
    )
    assert_close(loss2, to_numpy(loss), rtol)
    assert_same_grads(grads2, grads, rtol)
    return out_plain


@pytest.mark.parametrize("wipe", [True, False])
@pytest.mark.parametrize("use_masks", [True, False])
@pytest.mark.parametrize("implementation", ["chunked", "fused"])
def test_attention_matches_plain(implementation, use_masks, wipe):
    q, kv = randn(3, 4, 10), randn(3, 23, 6)  # 23 = 4 chunks of 5 + 3
    query_mask, key_mask = masks(3, 4, 23) if use_masks else (None, None)

    def make(**options):
        return PerceiverAttention(
            num_heads=2, qk_channels=8, v_channels=12,
            wipe_fully_masked_rows=wipe, **options,
        )

    def call(layer, q, kv):
        return layer(q, kv, query_mask=query_mask, key_mask=key_mask)

    options = dict(attention_implementation=implementation)
    if implementation == "chunked":
        options["key_value_chunk_size"] = 5
    out = check_against_plain(make, [q, kv], call, **options)
    if use_masks and wipe:
        # Example 1 has no allowed key: every row is the output bias alone.
        assert np.ptp(to_numpy(out)[1], axis=0).max() < 1e-6


@pytest.mark.parametrize(
    "chunk_size,remat", [(1, False), (7, False), (7, True), (100, True)]
)
def test_cross_attention_block_chunked_matches_plain(chunk_size, remat):
    """LayerNorm and key/value projections run per chunk, same result."""
    q, kv = randn(2, 3, 10), randn(2, 16, 5)
    key_mask = rng.random((2, 16)) > 0.3

    def make(**options):
        return PerceiverCrossAttentionBlock(
            num_heads=2, qk_channels=8, v_channels=12, widening_factor=2,
            **options,
        )

    def call(layer, q, kv):
        return layer(q, kv, key_mask=key_mask)

    check_against_plain(
        make, [q, kv], call, attention_implementation="chunked",
        key_value_chunk_size=chunk_size, remat=remat,
    )


def test_self_attention_block_fused_and_chunked_match_plain():
    x = randn(2, 9, 8)
    padding_mask = np.ones((2, 9), bool)
    padding_mask[1, 5:] = False

    def make(**options):
        return PerceiverSelfAttentionBlock(num_heads=2, **options)

    def call(layer, x):
        return layer(x, padding_mask=padding_mask)

    for options in ({"attention_implementation": "fused"},
                    {"attention_implementation": "chunked",
                     "key_value_chunk_size": 4, "remat": True}):
        check_against_plain(make, [x], call, **options)


def test_auto_chooses_by_score_count(monkeypatch):
    resolve = chunked_attention.resolve_implementation
    limit = chunked_attention.PLAIN_MAX_SCORES
    assert resolve("auto", 8, 512, limit // 4096) == "plain"
    monkeypatch.setattr(chunked_attention, "_fused_kernel_available",
                        lambda dtype: False)
    assert resolve("auto", 8, 512, limit // 4096 + 1) == "chunked"
    assert resolve("auto", 1, 512, None) == "chunked"  # unknown: stream
    monkeypatch.setattr(chunked_attention, "_fused_kernel_available",
                        lambda dtype: True)
    assert resolve("auto", 8, 512, 10**6) == "fused"
    assert resolve("auto", 8, 512, 10**6, dropout_active=True) == "chunked"
    for choice in ("plain", "chunked", "fused"):
        assert resolve(choice, 8, 512, 10**6) == choice
    layer = PerceiverAttention(num_heads=8)
    assert layer.implementation_for(512, 1000) == "plain"


def test_chunk_size_default_bounds_chunk_scores():
    size = chunked_attention.default_chunk_size(8, 512)
    assert size * 8 * 512 <= chunked_attention.CHUNK_SCORES
    assert chunked_attention.default_chunk_size(64, 10**6) == 64


@pytest.mark.parametrize(
    "options,match",
    [({"attention_implementation": "flash"}, "attention_implementation"),
     ({"key_value_chunk_size": 0}, "key_value_chunk_size"),
     ({"key_value_chunk_size": 2.5}, "key_value_chunk_size"),
     ({"attention_implementation": "fused", "attention_dropout": 0.1},
      "attention_dropout")],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        PerceiverAttention(num_heads=1, **options)
    with pytest.raises(ValueError, match=match):
        PerceiverCrossAttentionBlock(**options)


def test_remat_rejects_dropout():
    with pytest.raises(ValueError, match="remat"):
        PerceiverSelfAttentionBlock(remat=True, dropout=0.1)


def test_config_round_trip_keeps_options():
    block = PerceiverCrossAttentionBlock(
        num_heads=2, attention_implementation="chunked",
        key_value_chunk_size=7, remat=True,
    )
    config = block.get_config()
    assert config["attention_implementation"] == "chunked"
    assert config["key_value_chunk_size"] == 7 and config["remat"] is True
    clone = PerceiverCrossAttentionBlock.from_config(config)
    assert clone.get_config() == config
    clone.build((1, 2, 4), (1, 5, 6))
    assert clone.attention.key_value_chunk_size == 7
    assert clone.attention.remat


def test_chunked_attention_dropout_trains():
    """Dropout on streamed weights: active in training only, finite grads."""
    layer = PerceiverAttention(
        num_heads=2, attention_dropout=0.5,
        attention_implementation="chunked", key_value_chunk_size=3,
    )
    q, kv = randn(2, 4, 6), randn(2, 10, 6)
    inference = to_numpy(layer(q, kv))
    plain = PerceiverAttention(num_heads=2, attention_implementation="plain")
    plain.build(q.shape, kv.shape)
    plain.set_weights(layer.get_weights())
    assert_close(inference, to_numpy(plain(q, kv)), 1e-5)
    trained = to_numpy(layer(q, kv, training=True))
    assert np.isfinite(trained).all()
    assert np.abs(trained - inference).max() > 1e-3
    _, grads = value_and_grads(
        lambda q, kv: keras.ops.sum(layer(q, kv, training=True) ** 2),
        [q, kv], layer.trainable_variables,
    )
    assert all(np.isfinite(to_numpy(g)).all() for g in grads)


# --- backbone ----------------------------------------------------------


def backbone(**overrides):
    config = dict(
        inputs_shape=(None, 3),
        input_adapter=PerceiverArrayAdapter(num_bands=3, max_resolution=(32,)),
        num_latents=6, latent_dim=16, num_blocks=2,
        num_self_attends_per_block=2, num_cross_attend_heads=2,
        num_self_attend_heads=2, num_cross_attends=2,
    )
    config.update(overrides)
    return PerceiverBackbone(**config)


def test_backbone_chunked_equals_plain():
    plain = backbone(attention_implementation="plain")
    chunked = backbone(
        attention_implementation="chunked", key_value_chunk_size=4
    )
    chunked.set_weights(plain.get_weights())
    x = randn(2, 11, 3)
    mask = np.ones((2, 11), bool)
    mask[0, 7:] = False
    inputs = {"inputs": x, "padding_mask": mask}
    assert_close(chunked(inputs), to_numpy(plain(inputs)), 1e-5)
    for layer in chunked.cross_attends + chunked.self_attends:
        assert layer.attention.attention_implementation == "chunked"
    config = chunked.get_config()
    assert config["attention_implementation"] == "chunked"
    assert config["key_value_chunk_size"] == 4
    restored = PerceiverBackbone.from_config(config)
    assert restored.cross_attends[0].attention.key_value_chunk_size == 4


def test_backbone_remat_same_loss_and_gradients():
    plain = backbone(attention_implementation="chunked",
                     key_value_chunk_size=4)
    remat = backbone(attention_implementation="chunked",
                     key_value_chunk_size=4, remat=True)
    remat.set_weights(plain.get_weights())
    assert all(b.remat for b in remat.cross_attends + remat.self_attends)
    x = randn(2, 10, 3)
    cotangent = keras.ops.convert_to_tensor(randn(2, 6, 16))

    def loss_of(model):
        return lambda x: keras.ops.sum(model(x, training=True) * cotangent)

    loss, grads = value_and_grads(loss_of(plain), [x],
                                  plain.trainable_variables)
    loss2, grads2 = value_and_grads(loss_of(remat), [x],
                                    remat.trainable_variables)
    assert_close(loss2, to_numpy(loss), 1e-5)
    assert_same_grads(grads2, grads)


@pytest.mark.skipif(BACKEND not in ("tensorflow", "jax"),
                    reason="jit_compile is a TensorFlow/JAX option")
@pytest.mark.parametrize("remat", [False, True])
def test_fit_with_jit_compile_does_not_retrace(remat, monkeypatch):
    """fit/predict compile the streaming loop (XLA), traced once per shape;
    with remat, both forms run: per chunk in the chunked cross-attention,
    whole blocks in the (small, plain) latent self-attention."""
    # "auto": cross-attention (2 x 6 x 10 scores) chunked, self-attention
    # (2 x 6 x 6) plain.
    monkeypatch.setattr(chunked_attention, "PLAIN_MAX_SCORES", 100)
    model = backbone(attention_implementation="auto",
                     key_value_chunk_size=4, remat=remat, num_blocks=1,
                     num_cross_attends=1, num_self_attends_per_block=1)
    assert model.cross_attends[0].attention.implementation_for(6, 10) == (
        "chunked")
    assert model.self_attends[0].attention.implementation_for(6, 6) == "plain"
    classifier = PerceiverClassifier(model, num_classes=2)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2),
                       jit_compile=True)
    x = randn(16, 10, 3)
    y = (x[:, :, 0].mean(1) > 0).astype("int32")
    first = classifier.fit(x, y, batch_size=8, epochs=1, verbose=0)
    traces = []
    block = model.cross_attends[0]
    original_call = block.call
    block.call = lambda *a, **k: traces.append(1) or original_call(*a, **k)
    history = classifier.fit(x, y, batch_size=8, epochs=4, verbose=0)
    assert not traces  # the compiled step ran 8 times without Python
    losses = first.history["loss"] + history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert classifier.predict(x, batch_size=8, verbose=0).shape == (16, 2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs")
@pytest.mark.parametrize("batch", [None, 2])
def test_tensorflow_graph_with_unknown_key_count(batch):
    """A graph traced with M unknown streams with a dynamic chunk count
    (as `predict` does once calls with several M relax the signature)."""
    import tensorflow as tf

    layer = PerceiverCrossAttentionBlock(
        num_heads=2, attention_implementation="auto", key_value_chunk_size=4
    )
    plain = PerceiverCrossAttentionBlock(
        num_heads=2, attention_implementation="plain"
    )
    q = randn(2, 3, 8)
    layer.build(q.shape, (2, None, 6))
    plain.build(q.shape, (2, None, 6))
    plain.set_weights(layer.get_weights())
    fn = tf.function(
        lambda q, kv: layer(q, kv),
        input_signature=[tf.TensorSpec((batch, 3, 8)),
                         tf.TensorSpec((batch, None, 6))],
    )
    for m in (3, 4, 13):
        kv = randn(2, m, 6)
        assert_close(fn(q, kv), to_numpy(plain(q, kv)), 1e-5)


def test_backbone_predicts_inputs_of_several_sizes():
    model = backbone(num_latents=4, attention_implementation="chunked",
                     key_value_chunk_size=8)
    for m in (5, 12, 21):
        out = model.predict_on_batch(randn(1, m, 3))
        assert out.shape == (1, 4, 16) and np.isfinite(out).all()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_chunked_mixed_precision_close_to_float32(policy):
    """Scores and running sums stay float32 under half-precision policies."""
    q, kv = randn(2, 3, 8), randn(2, 13, 8)
    key_mask = np.ones((2, 13), bool)
    key_mask[1, 4:] = False
    block32 = PerceiverCrossAttentionBlock(
        num_heads=2, attention_implementation="plain"
    )
    block32.build(q.shape, kv.shape)
    block16 = PerceiverCrossAttentionBlock(
        num_heads=2, attention_implementation="chunked",
        key_value_chunk_size=4, remat=True, dtype=policy,
    )
    block16.build(q.shape, kv.shape)
    block16.set_weights(block32.get_weights())
    out16 = block16(q, kv, key_mask=key_mask, training=True)
    assert keras.backend.standardize_dtype(out16.dtype) == policy[6:]
    out32 = to_numpy(block32(q, kv, key_mask=key_mask))
    tol = 0.05 if "bfloat" in policy else 0.01
    np.testing.assert_allclose(to_numpy(out16).astype("float32"), out32,
                               atol=tol * 10, rtol=tol)
