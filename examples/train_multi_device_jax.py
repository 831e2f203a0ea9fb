"""Train a Perceiver on several devices with JAX: data and model parallel.

`keras.distribution.ModelParallel` on a (batch, model) device mesh: each
batch is split over the `batch` axis, and the weights named by
`PerceiverBackbone.get_layout_map` (self-attention heads, MLP units, the
latent array) over the `model` axis. The training code is the usual
`compile` / `fit`. Without accelerators the script makes 8 virtual CPU
devices (`--xla_force_host_platform_device_count`, which must be set before
JAX starts); with GPUs or TPUs it uses those.

    python examples/train_multi_device_jax.py [--model-parallel 2] [--epochs 20]

Runs offline on scikit-learn's 8x8 digits: held-out accuracy 0.953 after
20 epochs (majority-class baseline 0.083), about 4 CPU-minutes.
"""

import argparse
import os

if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    raise SystemExit("This example is for JAX: run it with KERAS_BACKEND=jax.")
# Only the CPU platform reads this; real accelerators are used as they are.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import perceiver_keras as pk  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-parallel", type=int, default=2,
                        help="devices along the model axis (divides 4)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // args.model_parallel, args.model_parallel),
        ("batch", "model"), devices,
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=pk.PerceiverBackbone.get_layout_map(mesh),
        batch_dim_name="batch",
    )
    print(f"{len(devices)} devices ({devices[0]}, ...); mesh "
          f"{dict(zip(mesh.axis_names, mesh.shape))}")

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]  # [N,8,8,1]
    labels = digits.target.astype("int32")
    # Whole batches of 64 only, so every batch divides over the batch axis.
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:22 * 64], order[22 * 64:28 * 64]  # 1408 and 384

    with distribution.scope():  # variables are created sharded
        backbone = pk.PerceiverBackbone(
            inputs_shape=(8, 8, 1),
            input_adapter=pk.PerceiverImageAdapter(
                prep_type="pixels", num_bands=8, max_resolution=(8, 8)
            ),
            num_latents=32, latent_dim=64, num_blocks=2,
            num_self_attends_per_block=2, num_self_attend_heads=4,
        )
        classifier = pk.PerceiverClassifier(backbone, num_classes=10)
    for path in ("latents/embeddings", "self_attend_0/attention/query/kernel",
                 "self_attend_0/mlp/output/kernel"):
        variable = next(v for v in classifier.weights if v.path == path)
        print(f"  {path:<40} {str(tuple(variable.shape)):<9} split as "
              f"{tuple(variable.value.sharding.spec)}")

    classifier.fit(images[train], labels[train], batch_size=64,
                   epochs=args.epochs, verbose=2)
    _, accuracy = classifier.evaluate(images[test], labels[test],
                                      batch_size=64, verbose=0)
    majority = np.bincount(labels[train]).argmax()
    baseline = (labels[test] == majority).mean()
    print(f"held-out accuracy: {accuracy:.3f} "
          f"(majority-class baseline {baseline:.3f})")


if __name__ == "__main__":
    main()
