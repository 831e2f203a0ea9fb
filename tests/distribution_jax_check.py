"""JAX on 8 virtual CPU devices: layouts and fit under Keras' distributions.

Run by tests/test_distribution.py in a subprocess, because XLA reads
`--xla_force_host_platform_device_count` once, when JAX starts. Prints one
JSON line (the last line of stdout) with what it measured; the test asserts.

    python tests/distribution_jax_check.py [layouts] [fit]
"""

import json
import os
import sys

if __name__ == "__main__":  # (the other backends' checks import the models)
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=8"
    )
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from perceiver_keras import PerceiverArrayAdapter  # noqa: E402
from perceiver_keras import PerceiverBackbone  # noqa: E402
from perceiver_keras import PerceiverClassifier  # noqa: E402
from perceiver_keras import PerceiverResamplerBackbone  # noqa: E402
from perceiver_keras import PerceiverTokenAdapter  # noqa: E402
from perceiver_keras.models.hip.hip_backbone import HiPBackbone  # noqa: E402
from perceiver_keras.models.perceiver_ar.perceiver_ar_backbone import (  # noqa: E402,E501
    PerceiverARBackbone,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm import (  # noqa: E402,E501
    PerceiverARCausalLM,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_causal_lm_preprocessor import (  # noqa: E402,E501
    PerceiverARCausalLMPreprocessor,
)
from perceiver_keras.models.perceiver_ar.perceiver_ar_tokenizer import (  # noqa: E402,E501
    PerceiverARTokenizer,
)

# Tiny configs; every split width is a multiple of the model axis (4).
BACKBONES = {
    "perceiver_io": lambda: PerceiverBackbone(
        (12,), PerceiverTokenAdapter(vocabulary_size=262, hidden_dim=16,
                                     max_sequence_length=12,
                                     name="input_adapter"),
        num_latents=4, latent_dim=16, num_self_attends_per_block=1,
        num_self_attend_heads=4, cross_attention_qk_channels=6,
        cross_attention_v_channels=6,
    ),
    "perceiver_ar": lambda: PerceiverARBackbone(
        vocabulary_size=262, hidden_dim=16, num_layers=2, num_heads=4,
        max_sequence_length=12, max_latents=4, tie_embeddings=False,
    ),
    "hip": lambda: HiPBackbone(
        modalities={"image": (16, 3), "audio": (8, 2)}, num_groups=[2, 1, 2],
        num_self_attends_per_block=[1, 1, 1], z_index_dim=[4, 8, 4],
        num_z_channels=[16, 32, 16], num_cross_attend_heads=[1, 1, 1],
        num_self_attend_heads=[2, 4, 2], cross_attend_widening_factor=[1, 1, 1],
        self_attend_widening_factor=[2, 2, 2], num_embedding_channels=16,
    ),
    "resampler": lambda: PerceiverResamplerBackbone(
        feature_dim=6, num_latents=3, num_layers=1, num_heads=2, head_dim=4,
        hidden_dim=8, num_key_value_heads=1, norm="rms_norm",
        mlp_activation="silu", gated_mlp=True,
    ),
}


def mesh(shape):
    return keras.distribution.DeviceMesh(
        shape, ("batch", "model"), keras.distribution.list_devices()
    )


def model_parallel(backbone_class):
    device_mesh = mesh((2, 4))
    return keras.distribution.ModelParallel(
        layout_map=backbone_class.get_layout_map(device_mesh),
        batch_dim_name="batch",
    )


def spec_of(variable):
    """The variable's PartitionSpec as a list, trailing Nones dropped."""
    spec = list(variable.value.sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return spec


def layouts():
    """For every family: each weight's path, shape, spec, shard shape."""
    report = {}
    for family, make in BACKBONES.items():
        backbone_class = type(make())
        distribution = model_parallel(backbone_class)
        layout_map = backbone_class.get_layout_map(distribution.device_mesh)
        with distribution.scope():
            backbone = make()
        report[family] = [
            {
                "path": v.path,
                "shape": list(v.shape),
                "spec": spec_of(v),
                "map": (None if layout_map[v.path] is None
                        else list(layout_map[v.path].axes)),
                "shard_shape": list(
                    v.value.addressable_shards[0].data.shape),
                "num_devices": len(v.value.sharding.device_set),
            }
            for v in backbone.weights
        ]
    return report


def point_sets(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 2)).astype("float32")
    x[:, :, 0] += rng.choice([-0.7, 0.7], size=(n, 1))
    return x, (x[:, :, 0].mean(1) > 0).astype("int32")


def make_classifier():
    backbone = PerceiverBackbone(
        inputs_shape=(12, 2),
        input_adapter=PerceiverArrayAdapter(position_encoding=None),
        num_latents=8, latent_dim=16, num_blocks=2,
        num_self_attends_per_block=1, num_self_attend_heads=4,
    )
    return PerceiverClassifier(backbone, num_classes=2)


def make_causal_lm():
    backbone = BACKBONES["perceiver_ar"]()
    preprocessor = PerceiverARCausalLMPreprocessor(
        PerceiverARTokenizer(), sequence_length=12, num_latents=4)
    return PerceiverARCausalLM(backbone=backbone, preprocessor=preprocessor,
                               num_latents=4)


TEXTS = ["the cat sat on the mat", "a dog ran in the fog"] * 8
TASKS = {
    "classifier": (make_classifier, PerceiverBackbone,
                   lambda: dict(zip(("x", "y"), point_sets(32, 0)))),
    "causal_lm": (make_causal_lm, PerceiverARBackbone,
                  lambda: dict(x=TEXTS)),
}


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(make, initial_weights, data, distribution):
    """Two epochs of two steps (batch 16, no shuffling) from fixed weights.

    Plain SGD: Adam divides by the root of tiny second moments, which turns
    float32 round-off in near-zero gradients into whole steps."""
    if distribution is None:
        model = make()
    else:
        with distribution.scope():
            model = make()
    # Copies: on CPU, JAX may adopt a NumPy buffer without copying, and fit
    # donates the variables' buffers, which would overwrite `initial_weights`.
    model.set_weights([np.array(w) for w in initial_weights])
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    steps = StepLosses()
    # PerceiverTask.fit hands Keras its batches without `shuffle=False`, so
    # Keras draws the batch order: the same seed gives every run the same.
    keras.utils.set_random_seed(1)
    model.fit(**data, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[steps])
    return model, steps.losses


def fit():
    """Per task: losses and weights on one device, DataParallel (8 devices)
    and ModelParallel (2 x 4 mesh, the backbone's layout map)."""
    report = {}
    for task, (make, backbone_class, data) in TASKS.items():
        keras.utils.set_random_seed(0)
        initial = [np.array(w) for w in make().get_weights()]
        one, losses = train(make, initial, data(), None)
        weights = [np.array(w) for w in one.get_weights()]
        entry = {"one_device": losses, "num_weights": len(weights),
                 "weights_moved": max(float(np.abs(a - b).max())
                                      for a, b in zip(weights, initial))}
        distributions = {
            "data_parallel": keras.distribution.DataParallel(
                devices=keras.distribution.list_devices()),
            "model_parallel": model_parallel(backbone_class),
        }
        for name, distribution in distributions.items():
            model, losses = train(make, initial, data(), distribution)
            entry[name] = losses
            entry[name + "_max_weight_diff"] = max(
                float(np.abs(np.array(a) - b).max() / max(1.0, np.abs(b).max()))
                for a, b in zip(model.get_weights(), weights)
            )
            entry[name + "_devices"] = max(
                len(v.value.sharding.device_set) for v in model.weights)
            entry[name + "_sharded"] = sum(
                1 for v in model.weights if any(spec_of(v)))
        report[task] = entry
    return report


if __name__ == "__main__":
    checks = {"layouts": layouts, "fit": fit}
    result = {name: checks[name]() for name in sys.argv[1:] or checks}
    result["num_devices"] = len(keras.distribution.list_devices())
    print(json.dumps(result))
