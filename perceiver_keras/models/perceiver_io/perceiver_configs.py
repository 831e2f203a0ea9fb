"""Config helpers: recommended configs, sizes and parameter counts.

`count_params` computes a model's parameter count from its config alone, in
closed form, without creating any weight; tests check it against
`count_params()` of built models.
"""

import math

import keras

from perceiver_keras.layers.adapters import PerceiverArrayAdapter
from perceiver_keras.layers.adapters import PerceiverImageAdapter
from perceiver_keras.layers.adapters import PerceiverSequenceAdapter
from perceiver_keras.layers.adapters import PerceiverTokenAdapter
from perceiver_keras.layers.position_encoding import fourier_channels


def recommended_config(kind, inputs_shape=None, **overrides):
    """`PerceiverBackbone` keyword arguments for a kind of data.

    Sized to train on a CPU in seconds to minutes (32 latents of 64
    channels, 4 cross-attention heads, unit-scale latents); scale
    `num_latents`, `latent_dim` and the depth up for larger data. Each kind
    is measured on a small task of its kind against a linear baseline
    (`tests/test_recommended_configs_learn.py`, README "Train on your own
    data").

    Args:
        kind: "image" (`[H, W, C]` pixels through DeepMind's conv stem to
            `latent_dim` channels at 1/4 resolution, with 2-D Fourier
            positions),
            "sequence" (`[L, C]` float features through the 1-D form of
            that stem, with 1-D Fourier positions), "point_set" (`[N, C]`
            unordered points whose first up-to-3 channels are coordinates:
            their Fourier features, projected; no positions), or "text"
            (byte token ids, 4 cross-attention heads).
        inputs_shape: shape of one example; defaults per kind.
        **overrides: any `PerceiverBackbone` argument.
    """
    latent_dim = overrides.get("latent_dim", 64)
    dtype = overrides.get("dtype")  # the adapter's too, as every layer's
    if kind == "image":
        inputs_shape = tuple(inputs_shape or (32, 32, 3))
        # DeepMind's conv stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max
        # pool): one shared filter finds a local pattern wherever it lies.
        # Projected 4x4 patches split a pattern across patch borders and
        # overfit small data (a faint square: 0.77-0.82 held out against
        # the stem's 0.97-0.98; `tests/test_recommended_configs_learn.py`).
        grid = tuple(d and math.ceil(d / 4) for d in inputs_shape[:2])
        adapter = PerceiverImageAdapter(
            prep_type="conv",
            spatial_downsample=4,
            num_channels=latent_dim,
            num_bands=4,
            max_resolution=None if None in grid else grid,
            name="input_adapter",
            dtype=dtype,
        )
    elif kind == "sequence":
        inputs_shape = tuple(inputs_shape or (None, 1))
        # The 1-D form of the image stem, for the same reason: a shared
        # filter finds a local pattern wherever it lies, where per-element
        # tokens with Fourier positions let the latents memorise where each
        # training example's pattern sat. Its pool averages, which also
        # averages the noise. Bump task: per-element projected tokens
        # 0.855-0.941 across seeds, backends and settings; the stem on JAX
        # at seeds 0-3, max pool 0.895-0.938, average pool 0.910-0.938.
        # Few bands: smooth positions.
        length = inputs_shape[0]
        adapter = PerceiverSequenceAdapter(
            prep_type="conv",
            num_channels=latent_dim,
            conv_pool="average",
            num_bands=4,
            max_resolution=(math.ceil(length / 4) if length else 256,),
            name="input_adapter",
            dtype=dtype,
        )
    elif kind == "point_set":
        inputs_shape = tuple(inputs_shape or (None, 3))
        # Points are read by what they are: Fourier features of their
        # coordinates (the first up-to-3 channels, roughly in [-1, 1]), as
        # the Perceiver paper embeds them, projected to a wide token. Raw
        # 3-channel points leave a LayerNorm one degree of freedom each.
        adapter = PerceiverArrayAdapter(
            position_encoding=None,
            feature_fourier_channels=tuple(range(min(3, inputs_shape[-1]))),
            feature_num_bands=4,
            feature_max_frequency=4.0,
            input_projection_dim=latent_dim,
            name="input_adapter",
            dtype=dtype,
        )
    elif kind == "text":
        inputs_shape = tuple(inputs_shape or (512,))
        adapter = PerceiverTokenAdapter(
            262, latent_dim, inputs_shape[0], name="input_adapter",
            dtype=dtype,
        )
    else:
        raise ValueError(
            "`kind` must be one of 'image', 'sequence', 'point_set', 'text'. "
            f"Received: kind={kind!r}."
        )
    config = dict(
        inputs_shape=inputs_shape,
        input_adapter=adapter,
        num_latents=32,
        latent_dim=latent_dim,
        num_blocks=2,
        num_self_attends_per_block=2,
        # Several heads let the latents pick out several elements at once
        # (a bump, a word); `latent_dim` query/key channels keep them
        # divisible whatever width the positions add to the tokens.
        num_cross_attend_heads=4,
        cross_attention_qk_channels=latent_dim,
        num_self_attend_heads=4,
        # Unit-scale latents: at 0.02 the query residual adds almost
        # nothing, so the first near-uniform cross-attention gives every
        # latent the same average token and they separate slowly.
        latent_init_scale=1.0,
    )
    config.update(overrides)
    return config


def _adapter(config):
    adapter = config.get("input_adapter")
    if isinstance(adapter, dict):
        adapter = keras.layers.deserialize(adapter)
    return adapter or PerceiverArrayAdapter(position_encoding=None)


def token_shape(config):
    """`(M, C)` of the tokens the latents attend to (M None if variable)."""
    adapter = _adapter(config)
    shape = adapter.compute_output_shape((None,) + tuple(config["inputs_shape"]))
    return tuple(shape[1:])


def _dense(fan_in, fan_out, bias=True):
    return fan_in * fan_out + (fan_out if bias else 0)


def _attention(q_in, kv_in, qk, v, out):
    return (_dense(q_in, qk) + _dense(kv_in, qk) + _dense(kv_in, v)
            + _dense(v, out))


def _cross_block(q, kv, qk=None, v=None, widening=1):
    qk = qk or kv
    v = v or qk
    norms = 2 * q + 2 * kv + 2 * q
    mlp = _dense(q, widening * q) + _dense(widening * q, q)
    return norms + _attention(q, kv, qk, v, q) + mlp


def _self_block(c, qk=None, v=None, widening=1):
    qk = qk or c
    v = v or qk
    mlp = _dense(c, widening * c) + _dense(widening * c, c)
    return 4 * c + _attention(c, c, qk, v, c) + mlp


def _adapter_params(adapter, inputs_shape):
    shape = (None,) + tuple(inputs_shape)
    if isinstance(adapter, PerceiverTokenAdapter):
        width = adapter.hidden_dim
        return width * (adapter.vocabulary_size + adapter.max_sequence_length)
    count = 0
    if getattr(adapter, "prep_type", None) == "conv":  # image or sequence
        kernel = 7 ** (len(shape) - 2)
        count += kernel * shape[-1] * adapter.num_channels  # no bias
        count += 4 * adapter.num_channels  # BatchNorm
    elif isinstance(adapter, PerceiverImageAdapter):
        width_in, width_out = shape[-1], adapter.num_channels
        if adapter.prep_type == "conv1x1":
            count += _dense(width_in, width_out)
        elif adapter.conv_after_patching:
            block = adapter.spatial_downsample**2
            if len(shape) == 5:
                block *= adapter.temporal_downsample
            count += _dense(width_in * block, width_out)
    transformed = adapter.transform_shape(shape)
    grid = transformed[1:-1]
    if adapter.input_projection_dim:
        width = adapter.feature_width(transformed[-1], projected=False)
        count += _dense(width, adapter.input_projection_dim)
    if adapter.position_encoding == "trainable":
        count += math.prod(grid) * adapter.position_channels
        raw = adapter.position_channels
    elif adapter.position_encoding == "fourier":
        raw = fourier_channels(
            len(grid), adapter.num_bands, adapter.concat_pos, adapter.sine_only
        )
    if adapter.project_pos_dim:
        count += _dense(raw, adapter.project_pos_dim)
    return count


def count_params(config, num_classes=None, pooling="query",
                 decoder_query_channels=None, decoder_qk_channels=None,
                 decoder_v_channels=None):
    """Parameter count of a `PerceiverBackbone` config, without building.

    With `num_classes`, counts a `PerceiverClassifier` on that backbone
    (`pooling` and the decoder options as in `PerceiverClassifier`).
    `config` takes `PerceiverBackbone` keyword arguments or its
    `get_config()`.
    """
    defaults = dict(
        num_latents=256, latent_dim=512, num_blocks=1,
        num_self_attends_per_block=6, cross_attend_widening_factor=1,
        self_attend_widening_factor=1, cross_attention_qk_channels=None,
        cross_attention_v_channels=None, self_attention_qk_channels=None,
        self_attention_v_channels=None, num_cross_attends=1,
        share_cross_attend_weights=True,
    )
    c = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    latent = c["latent_dim"]
    token_width = token_shape(config)[-1]
    num_cross = c["num_cross_attends"]
    if num_cross > 1 and c["share_cross_attend_weights"]:
        num_cross = 2
    total = _adapter_params(_adapter(config), config["inputs_shape"])
    total += c["num_latents"] * latent
    total += num_cross * _cross_block(
        latent, token_width, c["cross_attention_qk_channels"],
        c["cross_attention_v_channels"], c["cross_attend_widening_factor"],
    )
    total += c["num_self_attends_per_block"] * _self_block(
        latent, c["self_attention_qk_channels"],
        c["self_attention_v_channels"], c["self_attend_widening_factor"],
    )
    if num_classes is None:
        return total
    if pooling == "mean":
        return total + 2 * latent + _dense(latent, num_classes)
    query = decoder_query_channels or latent
    head = query + _cross_block(
        query, latent, decoder_qk_channels, decoder_v_channels
    )
    return total + head + _dense(query, num_classes)
