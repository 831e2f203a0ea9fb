import keras
import keras_hub
import numpy as np
import pytest

from conftest import assert_close
from conftest import to_numpy
from perceiver_keras import PerceiverArrayAdapter
from perceiver_keras import PerceiverBackbone
from perceiver_keras import PerceiverClassifier
from perceiver_keras import PerceiverImageAdapter
from perceiver_keras import count_params
from perceiver_keras import recommended_config
from perceiver_keras import token_shape

rng = np.random.default_rng(1)


def small_backbone(**overrides):
    config = dict(
        inputs_shape=(None, 3),
        input_adapter=PerceiverArrayAdapter(num_bands=3, max_resolution=(32,)),
        num_latents=6,
        latent_dim=16,
        num_blocks=2,
        num_self_attends_per_block=2,
        num_self_attend_heads=2,
    )
    config.update(overrides)
    return PerceiverBackbone(**config)


def test_forward_equals_manual_composition_with_shared_weights():
    backbone = small_backbone(num_blocks=3)
    x = rng.normal(size=(2, 9, 3)).astype("float32")
    tokens = backbone.input_adapter(x)
    latents = backbone.latents(tokens)
    h = backbone.cross_attends[0](latents, tokens)
    for _ in range(3):  # the same two layers, three times
        for layer in backbone.self_attends:
            h = layer(h)
    assert_close(backbone(x), to_numpy(h), 1e-6)


def test_parameter_count_independent_of_num_blocks():
    counts = {small_backbone(num_blocks=n).count_params() for n in (1, 4, 8)}
    assert len(counts) == 1


def test_iterative_cross_attends():
    shared = small_backbone(num_blocks=4, num_cross_attends=3)
    unshared = small_backbone(
        num_blocks=4, num_cross_attends=3, share_cross_attend_weights=False
    )
    one = small_backbone(num_blocks=4)
    assert len(shared.cross_attends) == 2
    assert len(unshared.cross_attends) == 3
    block = one.cross_attends[0].count_params()
    assert shared.count_params() == one.count_params() + block
    assert unshared.count_params() == one.count_params() + 2 * block
    x = rng.normal(size=(1, 5, 3)).astype("float32")
    tokens = shared.input_adapter(x)
    h = shared.latents(tokens)
    for i in range(4):
        if i < 3:
            h = shared.cross_attends[min(i, 1)](h, tokens)
        for layer in shared.self_attends:
            h = layer(h)
    assert_close(shared(x), to_numpy(h), 1e-6)
    with pytest.raises(ValueError, match="num_cross_attends"):
        small_backbone(num_blocks=2, num_cross_attends=3)


def test_padding_mask_hides_padded_inputs():
    backbone = small_backbone()
    x = rng.normal(size=(2, 8, 3)).astype("float32")
    mask = np.ones((2, 8), bool)
    mask[:, 5:] = False
    out = to_numpy(backbone({"inputs": x, "padding_mask": mask}))
    x_changed = x.copy()
    x_changed[:, 5:] = 50.0
    out2 = to_numpy(backbone({"inputs": x_changed, "padding_mask": mask}))
    np.testing.assert_allclose(out, out2, atol=1e-5)
    # Without the mask the padded values matter.
    assert np.abs(to_numpy(backbone(x_changed)) - out).max() > 1e-3


def test_variable_input_length():
    backbone = small_backbone()
    for length in (4, 11):
        x = rng.normal(size=(3, length, 3)).astype("float32")
        assert backbone.predict(x, verbose=0).shape == (3, 6, 16)


def test_image_backbone_shapes_and_token_shape():
    config = recommended_config("image", (10, 8, 3))
    backbone = PerceiverBackbone(**config)
    # The conv stem's SAME conv and pool: ceil(10/4) x ceil(8/4) tokens of
    # latent_dim channels, then 2-D positions (4 bands).
    assert token_shape(config) == (3 * 2, 64 + 2 * (2 * 4 + 1))
    out = backbone(rng.normal(size=(2, 10, 8, 3)).astype("float32"))
    assert tuple(out.shape) == (2, 32, 64)


@pytest.mark.parametrize("kind", ["image", "sequence", "point_set", "text"])
@pytest.mark.parametrize("pooling", ["query", "mean"])
def test_count_params_without_building(kind, pooling):
    shape = {"sequence": (20, 2)}.get(kind)
    config = recommended_config(kind, shape, num_cross_attends=2,
                                self_attend_widening_factor=2)
    expected = count_params(config, num_classes=5, pooling=pooling)
    backbone = PerceiverBackbone(**config)
    assert count_params(config) == backbone.count_params()
    assert count_params(backbone.get_config()) == backbone.count_params()
    classifier = PerceiverClassifier(backbone, 5, pooling=pooling)
    assert classifier.count_params() == expected


@pytest.mark.parametrize("adapter", [
    PerceiverImageAdapter("conv", 4, num_channels=8, num_bands=2),
    PerceiverImageAdapter("conv1x1", num_channels=8,
                          position_encoding="trainable", position_channels=4,
                          project_pos_dim=6),
    PerceiverImageAdapter("patches", 2, num_channels=8,
                          conv_after_patching=True, num_bands=2),
])
def test_count_params_image_adapters(adapter):
    config = dict(inputs_shape=(16, 16, 3), input_adapter=adapter,
                  num_latents=4, latent_dim=8, num_self_attend_heads=2,
                  cross_attention_qk_channels=4, self_attention_v_channels=4)
    assert count_params(config) == PerceiverBackbone(**config).count_params()


def test_config_round_trip_and_serialization():
    backbone = small_backbone(gelu_approximate=False, dropout=0.1)
    config = backbone.get_config()
    clone = PerceiverBackbone.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(backbone)
    )
    assert isinstance(restored, PerceiverBackbone)


def test_save_and_reload_preset(tmp_path):
    backbone = small_backbone()
    x = rng.normal(size=(2, 7, 3)).astype("float32")
    backbone.save_to_preset(str(tmp_path))
    restored = PerceiverBackbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(to_numpy(restored(x)), to_numpy(backbone(x)))
    generic = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert isinstance(generic, PerceiverBackbone)


# --- bad input ---------------------------------------------------------


@pytest.mark.parametrize("inputs,message", [
    (np.zeros((2, 5), "float32"), r"must have shape \(batch, None, 3\)"),
    (np.zeros((2, 5, 4), "float32"), r"inputs.shape=\(2, 5, 4\)"),
    (np.zeros((2, 5, 3), "int32"), "must hold float data"),
    (np.zeros((2, 0, 3), "float32"), "empty"),
    ({"inputs": np.zeros((2, 5, 3), "float32"),
      "padding_mask": np.ones((2, 4), bool)}, r"padding_mask.*\(2, 5\)"),
    ({"inputs": np.zeros((2, 5, 3), "float32"),
      "padding_mask": np.ones((2, 5), "float32")}, "bool or int"),
    ({"pixels": np.zeros((2, 5, 3), "float32")}, "Expected a dict"),
])
def test_bad_input_gets_clear_error(inputs, message):
    backbone = small_backbone()
    with pytest.raises(ValueError, match=message):
        backbone(inputs)
    with pytest.raises(ValueError, match=message):
        backbone.predict(inputs, verbose=0)


def test_mask_refused_when_adapter_downsamples():
    backbone = PerceiverBackbone(
        (16, 16, 3), PerceiverImageAdapter("conv", 4, num_channels=4,
                                           num_bands=2),
        num_latents=4, latent_dim=8, num_self_attend_heads=2,
    )
    with pytest.raises(ValueError, match="padding_mask"):
        backbone({"inputs": np.zeros((1, 16, 16, 3), "float32"),
                  "padding_mask": np.ones((1, 16, 16), bool)})
