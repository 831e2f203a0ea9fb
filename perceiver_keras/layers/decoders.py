"""Decoders: from latents `[B, N, C]` to outputs.

Perceiver IO decodes by cross-attending from output queries to the latents,
so the number of outputs is independent of input size and depth.
"""

import math

import keras
from keras import ops

from perceiver_keras.layers.blocks import PerceiverCrossAttentionBlock
from perceiver_keras.layers.dense import PerceiverDense
from perceiver_keras.layers.position_encoding import FourierPositionEncoding
from perceiver_keras.layers.position_encoding import TrainablePositionEncoding
from perceiver_keras.layers.utils import layer_norm

QUERY_ENCODINGS = ("trainable", "fourier", None)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverQueryDecoder(keras.layers.Layer):
    """Output queries cross-attend to the latents, then an optional Dense.

    Args:
        output_index_dims: grid of outputs, e.g. `(64,)` or `(368, 496)`.
        query_encoding: "trainable" (learned `[O, query_channels]`),
            "fourier" (Fourier features of the output grid) or None (the
            caller passes `queries`).
        query_channels: width of trainable queries (defaults to the latent
            width).
        num_bands, max_resolution, concat_pos, sine_only: Fourier options.
        output_channels: width of the final Dense; None skips it.
        num_heads, qk_channels, v_channels, widening_factor,
        use_query_residual, gelu_approximate, dropout, attention_dropout,
        wipe_fully_masked_rows: options of the cross-attention block.

    Call arguments:
        latents: `[B, N, C]`.
        queries: `[B, O, Cq]` when `query_encoding` is None.
        query_mask: optional bool `[B, O]`; masked queries attend to nothing
            (their attention output is zero).
    """

    def __init__(
        self,
        output_index_dims=None,
        query_encoding="trainable",
        query_channels=None,
        num_bands=64,
        max_resolution=None,
        concat_pos=True,
        sine_only=False,
        query_init_scale=0.02,
        output_channels=None,
        num_heads=1,
        qk_channels=None,
        v_channels=None,
        widening_factor=1,
        use_query_residual=False,
        gelu_approximate=True,
        dropout=0.0,
        attention_dropout=0.0,
        wipe_fully_masked_rows=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if query_encoding not in QUERY_ENCODINGS:
            raise ValueError(
                f"`query_encoding` must be one of {QUERY_ENCODINGS}. "
                f"Received: query_encoding={query_encoding!r}."
            )
        if query_encoding is not None and not output_index_dims:
            raise ValueError(
                "`output_index_dims` is required when the decoder makes its "
                "own queries."
            )
        self.output_index_dims = (
            None if output_index_dims is None else tuple(output_index_dims)
        )
        self.query_encoding = query_encoding
        self.query_channels = query_channels
        self.num_bands = num_bands
        self.max_resolution = (
            None if max_resolution is None else tuple(max_resolution)
        )
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.query_init_scale = query_init_scale
        self.output_channels = output_channels
        self.block_kwargs = dict(
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
            widening_factor=widening_factor,
            use_query_residual=use_query_residual,
            gelu_approximate=gelu_approximate,
            dropout=dropout,
            attention_dropout=attention_dropout,
            wipe_fully_masked_rows=wipe_fully_masked_rows,
        )

    @property
    def num_outputs(self):
        return math.prod(self.output_index_dims)

    def query_width(self, latent_dim, queries_shape=None):
        if self.query_encoding is None:
            return queries_shape[-1]
        if self.query_encoding == "trainable":
            return self.query_channels or latent_dim
        return self.fourier.channels(len(self.output_index_dims))

    def build(self, latents_shape, queries_shape=None):
        latent_dim = latents_shape[-1]
        self.fourier = None
        self.trainable_queries = None
        if self.query_encoding == "trainable":
            self.trainable_queries = TrainablePositionEncoding(
                self.num_outputs,
                self.query_width(latent_dim),
                self.query_init_scale,
                dtype=self.dtype_policy,
                name="queries",
            )
            self.trainable_queries.build()
        elif self.query_encoding == "fourier":
            self.fourier = FourierPositionEncoding(
                self.num_bands,
                self.max_resolution,
                self.concat_pos,
                self.sine_only,
                dtype=self.dtype_policy,
                name="fourier_queries",
            )
        elif queries_shape is None:
            raise ValueError("`queries` are required: query_encoding=None.")
        width = self.query_width(latent_dim, queries_shape)
        query_shape = (latents_shape[0], None, width)
        self.cross_attention = PerceiverCrossAttentionBlock(
            **self.block_kwargs, dtype=self.dtype_policy, name="cross_attention"
        )
        self.cross_attention.build(query_shape, latents_shape)
        self.output_dense = None
        if self.output_channels:
            self.output_dense = PerceiverDense(
                self.output_channels, dtype=self.dtype_policy, name="output"
            )
            self.output_dense.build(query_shape)
        self.built = True

    def make_queries(self, latents):
        if self.trainable_queries is not None:
            return self.trainable_queries(latents)
        features = ops.convert_to_tensor(
            self.fourier.features_for(self.output_index_dims),
            dtype=self.compute_dtype,
        )
        return ops.broadcast_to(
            features[None], (ops.shape(latents)[0], *features.shape)
        )

    def call(self, latents, queries=None, query_mask=None, training=None):
        if queries is None:
            queries = self.make_queries(latents)
        x = self.cross_attention(
            queries, latents, query_mask=query_mask, training=training
        )
        if self.output_dense is not None:
            x = self.output_dense(x)
        return x

    def compute_output_shape(self, latents_shape, queries_shape=None):
        num = queries_shape[1] if queries_shape else self.num_outputs
        width = self.output_channels or self.query_width(
            latents_shape[-1], queries_shape
        )
        return (latents_shape[0], num, width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_index_dims": self.output_index_dims,
                "query_encoding": self.query_encoding,
                "query_channels": self.query_channels,
                "num_bands": self.num_bands,
                "max_resolution": self.max_resolution,
                "concat_pos": self.concat_pos,
                "sine_only": self.sine_only,
                "query_init_scale": self.query_init_scale,
                "output_channels": self.output_channels,
                **self.block_kwargs,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverClassificationDecoder(PerceiverQueryDecoder):
    """One learned query cross-attends to the latents; Dense to logits.

    Returns `[B, num_classes]`. `use_query_residual` defaults to True (the
    Fourier and conv ImageNet models, and transformers); DeepMind's
    learned-position ImageNet model sets it False.
    """

    def __init__(self, num_classes, use_query_residual=True, **kwargs):
        for fixed in ("output_index_dims", "query_encoding", "output_channels"):
            kwargs.pop(fixed, None)
        super().__init__(
            output_index_dims=(1,),
            query_encoding="trainable",
            output_channels=num_classes,
            use_query_residual=use_query_residual,
            **kwargs,
        )
        self.num_classes = num_classes

    def call(self, latents, queries=None, query_mask=None, training=None):
        logits = super().call(latents, queries, query_mask, training=training)
        return logits[:, 0]

    def compute_output_shape(self, latents_shape, queries_shape=None):
        return (latents_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class PerceiverMeanPoolDecoder(keras.layers.Layer):
    """The original Perceiver's head: mean over latents, LayerNorm, Dense.

    Returns `[B, output_channels]`.
    """

    def __init__(self, output_channels, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = output_channels

    def build(self, latents_shape):
        self.norm = layer_norm("norm", self.dtype_policy)
        self.norm.build((latents_shape[0], latents_shape[-1]))
        self.output_dense = PerceiverDense(
            self.output_channels, dtype=self.dtype_policy, name="output"
        )
        self.output_dense.build((latents_shape[0], latents_shape[-1]))
        self.built = True

    def call(self, latents):
        return self.output_dense(self.norm(ops.mean(latents, axis=1)))

    def compute_output_shape(self, latents_shape):
        return (latents_shape[0], self.output_channels)

    def get_config(self):
        config = super().get_config()
        config["output_channels"] = self.output_channels
        return config
