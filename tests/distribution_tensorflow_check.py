"""TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPU devices.

Run by tests/test_distribution.py in a subprocess: logical devices must be
configured before TensorFlow initialises them. Prints one JSON line (the
last line of stdout): per task, the step losses and final weights' scaled
max|diff| of the mirrored run against the same run on one device.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from distribution_jax_check import TEXTS  # noqa: E402
from distribution_jax_check import StepLosses  # noqa: E402
from distribution_jax_check import make_causal_lm  # noqa: E402
from distribution_jax_check import make_classifier  # noqa: E402
from distribution_jax_check import point_sets  # noqa: E402


def bare_causal_lm():
    lm = make_causal_lm()
    lm.preprocessor = None
    return lm


def token_batches():
    """The preprocessor's output, with an int32 `padding_mask`: to build the
    model, Keras' TensorFlow trainer averages the first batch over the
    replicas (`_maybe_symbolic_build`), which fails on a bool tensor."""
    x, y, sample_weight = make_causal_lm().preprocessor(TEXTS)
    x = {"token_ids": np.array(x["token_ids"]),
         "padding_mask": np.array(x["padding_mask"]).astype("int32")}
    return dict(x=x, y=np.array(y), sample_weight=np.array(sample_weight))


TASKS = {
    "classifier": (make_classifier,
                   lambda: dict(zip(("x", "y"), point_sets(32, 0)))),
    "causal_lm": (bare_causal_lm, token_batches),
}


def train(make, initial_weights, data, strategy):
    """Two epochs of two steps (batch 16, no shuffling), plain SGD."""
    with strategy.scope():
        model = make()
        model.set_weights(initial_weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    steps = StepLosses()
    keras.utils.set_random_seed(1)  # the batch order Keras draws
    model.fit(**data, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[steps])
    return model, steps.losses


def main():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices)
    one = tf.distribute.OneDeviceStrategy(devices[0])
    report = {"devices": devices,
              "replicas": mirrored.num_replicas_in_sync}
    for task, (make, data) in TASKS.items():
        keras.utils.set_random_seed(0)
        initial = [np.array(w) for w in make().get_weights()]
        single, losses = train(make, initial, data(), one)
        weights = [np.array(w) for w in single.get_weights()]
        model, mirrored_losses = train(make, initial, data(), mirrored)
        report[task] = {
            "one_device": losses,
            "mirrored": mirrored_losses,
            "mirrored_max_weight_diff": max(
                float(np.abs(np.array(a) - b).max() / max(1.0, np.abs(b).max()))
                for a, b in zip(model.get_weights(), weights)),
            "weights_moved": max(float(np.abs(a - b).max())
                                 for a, b in zip(weights, initial)),
            "mirrored_variables": sum(
                isinstance(v.value, tf.distribute.DistributedValues)
                for v in model.weights),
            "num_weights": len(weights),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
