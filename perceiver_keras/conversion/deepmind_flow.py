"""DeepMind's optical-flow Perceiver IO (`optical_flow.ipynb`) -> Keras.

DeepMind's model: `patches_for_flow` (3x3 patches of both frames),
`ImagePreprocessor(prep_type="patches", temporal_downsample=2,
conv_after_patching=True)`, `PerceiverEncoder`, `FlowDecoder` queried with
the preprocessed inputs; the colab multiplies the output by
`FLOW_SCALE_FACTOR`. Keras: `PerceiverOpticalFlow` over a `PerceiverBackbone`
whose input adapter is a `PerceiverFlowAdapter`.
"""

from perceiver_keras.conversion.common import cross_attention_rows
from perceiver_keras.conversion.common import dense_rows
from perceiver_keras.conversion.deepmind import adapter_rows
from perceiver_keras.conversion.deepmind import backbone_options
from perceiver_keras.conversion.deepmind import check_keys
from perceiver_keras.conversion.deepmind import encoder_rows
from perceiver_keras.conversion.deepmind import require
from perceiver_keras.layers.flow import PerceiverFlowAdapter
from perceiver_keras.models.perceiver_io.perceiver_backbone import PerceiverBackbone
from perceiver_keras.models.perceiver_io.perceiver_optical_flow import PerceiverOpticalFlow

FRAME_CHANNELS = 3  # RGB: the released patch projection reads 2 x 9 x 3 values
TRAIN_SIZE = (368, 496)

TOP_LEVEL_KEYS = ("input_preprocessor", "encoder", "decoder",
                  "flow_scale_factor")
PREPROCESSOR_KEYS = (
    "position_encoding_type", "fourier_position_encoding_kwargs",
    "trainable_position_encoding_kwargs", "n_extra_pos_mlp", "prep_type",
    "spatial_downsample", "temporal_downsample", "conv_after_patching",
    "num_channels", "concat_or_add_pos", "project_pos_dim", "name",
)
# `num_z_channels` and the decoder's own position encoding are accepted and
# unused: FlowDecoder queries with the preprocessed inputs instead.
DECODER_KEYS = (
    "output_image_shape", "rescale_factor", "use_query_residual",
    "output_num_channels", "num_z_channels", "qk_channels", "v_channels",
    "num_heads", "position_encoding_type", "fourier_position_encoding_kwargs",
    "trainable_position_encoding_kwargs", "concat_preprocessed_input",
    "final_project", "name",
)
FOURIER_KEYS = ("num_bands", "max_resolution", "sine_only", "concat_pos")
TRAINABLE_KEYS = ("num_channels", "init_scale")


def image_adapter_options(preprocessor_config, where="input_preprocessor"):
    """`PerceiverImageAdapter` arguments for DeepMind's `ImagePreprocessor`.

    Only what the flow and video models use in patch mode is reproduced;
    anything else is refused with a ValueError.
    """
    cfg = preprocessor_config
    check_keys(cfg, PREPROCESSOR_KEYS, where)
    # DeepMind's default prep_type is "conv"; only "patches" is reproduced.
    require({"prep_type": cfg.get("prep_type", "conv")}, "prep_type",
            ("patches",), where)
    require(cfg, "n_extra_pos_mlp", (0,), where)
    position = require(
        cfg, "position_encoding_type", ("fourier", "trainable"), where
    )
    options = dict(
        spatial_downsample=cfg.get("spatial_downsample", 4),
        temporal_downsample=cfg.get("temporal_downsample", 1),
        conv_after_patching=cfg.get("conv_after_patching", False),
        num_channels=cfg.get("num_channels", 64),
        concat_or_add_pos=cfg.get("concat_or_add_pos", "concat"),
        project_pos_dim=cfg.get("project_pos_dim", -1),
        position_encoding=position,
    )
    return with_position_options(options, cfg, where)


def with_position_options(options, cfg, where):
    """`options` (holding `project_pos_dim` and `position_encoding`) with
    the position encoding's arguments from DeepMind's preprocessor config
    `cfg`: `project_pos_dim` <= 0 means no projection (None)."""
    if options["project_pos_dim"] <= 0:
        options["project_pos_dim"] = None
    if options["position_encoding"] == "fourier":
        options.update(fourier_options(
            cfg.get("fourier_position_encoding_kwargs", {}), where
        ))
    else:
        trainable = cfg.get("trainable_position_encoding_kwargs", {})
        check_keys(trainable, TRAINABLE_KEYS, f"{where} trainable positions")
        options.update(
            position_channels=trainable["num_channels"],
            position_init_scale=trainable.get("init_scale", 0.02),
        )
    return options


def fourier_options(fourier_config, where):
    """Fourier arguments of the adapters and decoders (DeepMind defaults)."""
    check_keys(fourier_config, FOURIER_KEYS, f"{where} Fourier positions")
    max_resolution = fourier_config.get("max_resolution")
    return dict(
        num_bands=fourier_config["num_bands"],
        max_resolution=None if max_resolution is None else tuple(
            max_resolution
        ),
        concat_pos=fourier_config.get("concat_pos", True),
        sine_only=fourier_config.get("sine_only", False),
    )


def build_task(deepmind_config):
    """A randomly initialised `PerceiverOpticalFlow` for `deepmind_config`."""
    check_keys(deepmind_config, TOP_LEVEL_KEYS, "optical flow config")
    decoder = deepmind_config["decoder"]
    check_keys(decoder, DECODER_KEYS, "decoder")
    require(decoder, "final_project", (True,), "decoder")
    height, width = decoder.get("output_image_shape", TRAIN_SIZE)
    adapter_options = image_adapter_options(
        deepmind_config["input_preprocessor"]
    )
    if adapter_options.get("max_resolution") is None and (
        adapter_options["position_encoding"] == "fourier"
    ):
        adapter_options["max_resolution"] = (height, width)
    adapter = PerceiverFlowAdapter(**adapter_options, name="input_adapter")
    backbone = PerceiverBackbone(
        inputs_shape=(adapter.temporal_downsample, height, width,
                      FRAME_CHANNELS),
        input_adapter=adapter,
        **backbone_options(deepmind_config["encoder"]),
    )
    return PerceiverOpticalFlow(
        backbone,
        output_channels=decoder.get("output_num_channels", 2),
        rescale_factor=float(decoder.get("rescale_factor", 100.0)),
        flow_scale_factor=float(deepmind_config.get("flow_scale_factor", 1)),
        decoder_num_heads=decoder.get("num_heads", 1),
        decoder_qk_channels=decoder.get("qk_channels"),
        decoder_v_channels=decoder.get("v_channels"),
        decoder_use_query_residual=decoder.get("use_query_residual", False),
    )


def weight_rows(task, deepmind_config):
    """The conversion table, in DeepMind's parameter names."""
    backbone = task.backbone
    preprocessor_scope = deepmind_config["input_preprocessor"].get(
        "name", "image_preprocessor"
    )
    decoder_scope = deepmind_config["decoder"].get("name", "flow_decoder")
    basic_decoder = f"{decoder_scope}/~/basic_decoder"
    return [
        *adapter_rows(preprocessor_scope, backbone.input_adapter),
        *encoder_rows(backbone, deepmind_config["encoder"]),
        *cross_attention_rows(f"{basic_decoder}/cross_attention",
                              task.decoder.cross_attention),
        *dense_rows(f"{basic_decoder}/output", task.decoder.output_dense),
    ]


def run_inputs(task, inputs):
    """`{"flow"}` for the fixture's `{"images": [B, 2, H, W, 3]}`."""
    flow = task.predict_on_batch({"inputs": inputs["images"]})
    return {"flow": flow}
