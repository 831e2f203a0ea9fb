"""What is measured: the workloads, their sizes, their FLOPs and their
inputs (seeded NumPy, identical in every process)."""

MIB = 2**20
GIB = 2**30

FRAMEWORKS = ("transformers", "torch", "jax", "tensorflow")
KERAS_BACKENDS = ("torch", "jax", "tensorflow")
TOLERANCE = 2e-5  # max|diff| <= TOLERANCE * max(1, max|ref|)
SEED = 0

# transformers' PerceiverForImageClassificationFourier input width: RGB +
# 2-D Fourier features (64 bands, sine and cosine) + the 2 raw positions.
FOURIER_CHANNELS = 3 + 2 * 2 * 64 + 2
# PerceiverForImageClassificationLearned: 256 conv channels + 256 positions.
LEARNED_CHANNELS = 256 + 256
# transformers' PerceiverForMaskedLM decoder query/key width (fixed in its
# constructor: 8 heads x 32).
MLM_DECODER_QK = 8 * 32

WORKLOADS = {
    "vision-fourier": dict(
        kind="inference",
        architecture="PerceiverForImageClassificationFourier",
        config=dict(
            d_model=FOURIER_CHANNELS, num_latents=512, d_latents=1024,
            num_blocks=8, num_self_attends_per_block=6,
            num_self_attention_heads=8, num_cross_attention_heads=1,
            num_labels=1000,
        ),
        image_size=224, batches=[1, 4], dtypes=["float32", "bfloat16"],
    ),
    "language-mlm": dict(
        kind="inference",
        architecture="PerceiverForMaskedLM",
        config={},  # PerceiverConfig's defaults are language-perceiver's
        batches=[1], dtypes=["float32", "bfloat16"],
    ),
    "image-training": dict(
        kind="training",
        architecture="PerceiverForImageClassificationLearned",
        config=dict(
            image_size=64, d_model=LEARNED_CHANNELS, num_latents=256,
            d_latents=512, num_blocks=1, num_self_attends_per_block=4,
            num_self_attention_heads=8, num_cross_attention_heads=1,
            num_labels=100,
            # No dropout: both sides then compute the same first-step loss.
            attention_probs_dropout_prob=0.0,
        ),
        batches=[8], learning_rate=1e-4,
        # Ours in mixed_bfloat16, transformers with model.to(bfloat16).
        dtypes=["float32", "bfloat16"],
    ),
    "encoder-scaling": dict(
        kind="scaling",
        architecture="PerceiverModel",
        config=dict(
            d_model=64, num_latents=512, d_latents=1024, num_blocks=1,
            num_self_attends_per_block=1, num_self_attention_heads=8,
            num_cross_attention_heads=8,
        ),
        sizes=[1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000],
    ),
    # Ours only: `fit` of a recommended_config classifier per kind (the
    # library's main use), float32 and mixed_bfloat16, across backends.
    "fit-steps": dict(
        kind="fit", architecture=None, config={},
        kinds=["image", "sequence", "point_set", "text"],
        dtypes=["float32", "mixed_bfloat16"], steps=12, batch_size=32,
    ),
}

# The dtype policy of our model for a row's dtype, per workload kind: pure
# bfloat16 for inference (as transformers' model.to(torch.bfloat16)),
# mixed_bfloat16 for training (float32 weights and optimizer state).
KERAS_DTYPES = {("inference", "bfloat16"): "bfloat16",
                ("training", "bfloat16"): "mixed_bfloat16"}


def keras_dtype(spec, dtype):
    """Our dtype policy for a row of `spec` in `dtype` (None: float32)."""
    if dtype == "float32":
        return None
    return KERAS_DTYPES.get((spec["kind"], dtype), dtype)

# --quick: the same four workloads, small enough for a ~3 minute smoke
# test. The scaling sizes still cross the plain -> chunked switch ("auto"
# streams once heads x latents x M > 2**25: M > 65,536 with 64 latents).
QUICK = {
    "vision-fourier": dict(
        config=dict(num_latents=64, d_latents=128, num_blocks=2,
                    num_self_attends_per_block=2, num_labels=10),
        image_size=32,
    ),
    "language-mlm": dict(
        config=dict(max_position_embeddings=256, d_model=64, num_latents=32,
                    d_latents=128, num_self_attends_per_block=2),
    ),
    "image-training": dict(
        config=dict(image_size=16, num_latents=32, d_latents=64,
                    num_self_attends_per_block=2, num_labels=10),
    ),
    "encoder-scaling": dict(
        config=dict(num_latents=64, d_latents=128),
        sizes=[1_000, 16_000, 128_000],
    ),
    "fit-steps": dict(steps=4),
}


def workload_specs(quick):
    """{name: spec}; with `quick`, QUICK's overrides applied."""
    specs = {}
    for name, spec in WORKLOADS.items():
        spec = dict(spec, config=dict(spec["config"]))
        if quick:
            overrides = QUICK[name]
            spec.update({k: v for k, v in overrides.items() if k != "config"})
            spec["config"].update(overrides.get("config", {}))
        specs[name] = spec
    return specs


# --- FLOPs --------------------------------------------------------------------
#
# Multiply-adds of matrix products only, counted as 2*m*n*k: projections,
# Q K^T, softmax(Q K^T) V, MLPs, the decoder and the output layer.
# LayerNorm, softmax, GELU, Fourier features and embeddings lookups are not
# counted. transformers' defaults fill the unset config fields.

CONFIG_DEFAULTS = dict(
    num_latents=256, d_latents=1280, d_model=768, num_blocks=1,
    num_self_attends_per_block=26, qk_channels=None, v_channels=None,
    cross_attention_widening_factor=1, self_attention_widening_factor=1,
    cross_attention_shape_for_attention="kv", vocab_size=262,
    max_position_embeddings=2048, image_size=56, num_labels=2,
)


def attention_layer_flops(num_queries, num_keys, q_dim, kv_dim, qk, v, out,
                          widening):
    """One transformers `PerceiverLayer`: attention, then its MLP on the
    query-width residual stream (`out` is the attention's output width,
    equal to `q_dim` in every layer here)."""
    projections = (2 * num_queries * q_dim * qk           # Q
                   + 2 * num_keys * kv_dim * (qk + v)     # K, V
                   + 2 * num_queries * v * out)           # output
    scores = 2 * num_queries * num_keys * qk              # Q K^T
    mix = 2 * num_queries * num_keys * v                  # softmax(.) V
    mlp = 2 * 2 * num_queries * q_dim * (widening * q_dim)  # two Linears
    return projections + scores + mix + mlp


def encoder_flops(config, num_inputs, input_channels):
    """Latents cross-attend to `num_inputs` x `input_channels`, then the
    self-attention stack (num_blocks x num_self_attends_per_block)."""
    c = {**CONFIG_DEFAULTS, **config}
    latents, width = c["num_latents"], c["d_latents"]
    cross_qk = c["qk_channels"] or (
        width if c["cross_attention_shape_for_attention"] == "q"
        else input_channels)
    cross = attention_layer_flops(
        latents, num_inputs, width, input_channels, cross_qk,
        c["v_channels"] or cross_qk, width,
        c["cross_attention_widening_factor"])
    self_qk = c["qk_channels"] or width
    self_v = c["v_channels"] or self_qk
    one_self = attention_layer_flops(
        latents, latents, width, width, self_qk, self_v, self_v,
        c["self_attention_widening_factor"])
    return cross + c["num_blocks"] * c["num_self_attends_per_block"] * one_self


def forward_flops(spec, num_inputs=None):
    """FLOPs of one example's forward pass of a workload's model."""
    c = {**CONFIG_DEFAULTS, **spec["config"]}
    latents, width = c["num_latents"], c["d_latents"]
    architecture = spec["architecture"]
    if architecture == "PerceiverModel":
        return encoder_flops(c, num_inputs, c["d_model"])
    if architecture == "PerceiverForMaskedLM":
        length, d_model = c["max_position_embeddings"], c["d_model"]
        decoder = attention_layer_flops(
            length, latents, d_model, width, MLM_DECODER_QK, d_model,
            d_model, 1)
        logits = 2 * length * d_model * c["vocab_size"]  # tied embedding
        return encoder_flops(c, length, d_model) + decoder + logits
    # Image classifiers: one learned query of d_latents channels.
    decoder = attention_layer_flops(1, latents, width, width, width, width,
                                    width, 1) + 2 * width * c["num_labels"]
    if architecture == "PerceiverForImageClassificationFourier":
        pixels = spec["image_size"] ** 2
        return encoder_flops(c, pixels, FOURIER_CHANNELS) + decoder
    if architecture == "PerceiverForImageClassificationLearned":
        pixels = c["image_size"] ** 2
        stem = 2 * pixels * 3 * 256 + 2 * pixels * 256 * 256  # conv, positions
        return stem + encoder_flops(c, pixels, LEARNED_CHANNELS) + decoder
    raise ValueError(f"No FLOP count for {architecture}.")


def training_step_flops(spec, batch):
    """Forward + backward: the backward pass does two products (input and
    weight gradients) per forward product, so 3x the forward count."""
    return 3 * batch * forward_flops(spec)


# --- inputs (identical in every process: seeded NumPy) -------------------------


def image_batch(size, batch):
    """Normalised-looking images `[B, 3, H, W]` (transformers' layout)."""
    import numpy as np

    rng = np.random.default_rng(SEED + batch)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)


def token_batch(length, batch, vocabulary):
    import numpy as np

    rng = np.random.default_rng(SEED + batch)
    ids = rng.integers(0, vocabulary, (batch, length))
    return ids, np.ones((batch, length), bool)


def labels_batch(batch, num_labels):
    import numpy as np

    return np.random.default_rng(SEED).integers(0, num_labels, batch)


def array_batch(num_inputs, channels):
    import numpy as np

    rng = np.random.default_rng(SEED)
    return rng.standard_normal((1, num_inputs, channels), dtype=np.float32)


def image_size_of(spec):
    if "image_size" in spec:
        return spec["image_size"]
    return spec["config"]["image_size"]


def transformers_inputs(spec, batch):
    """Keyword arguments of the transformers model's forward, as NumPy."""
    if spec["architecture"] == "PerceiverForMaskedLM":
        c = {**CONFIG_DEFAULTS, **spec["config"]}
        ids, mask = token_batch(c["max_position_embeddings"], batch,
                                c["vocab_size"])
        return {"inputs": ids.astype("int64"),
                "attention_mask": mask.astype("int64")}
    return {"inputs": image_batch(image_size_of(spec), batch)}


def keras_inputs(spec, batch):
    """The same data as the Keras task's native input (channels-last
    images; int32 ids with a boolean padding mask)."""
    import numpy as np

    if spec["architecture"] == "PerceiverForMaskedLM":
        c = {**CONFIG_DEFAULTS, **spec["config"]}
        ids, mask = token_batch(c["max_position_embeddings"], batch,
                                c["vocab_size"])
        return {"inputs": ids.astype("int32"), "padding_mask": mask}
    images = image_batch(image_size_of(spec), batch)
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


