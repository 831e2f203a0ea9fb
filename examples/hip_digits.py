"""HiP on handwritten digits: masked auto-encoding, then classification.

Runs offline (the 1,797 8x8 digits ship with scikit-learn). Each image is a
set of 64 pixel tokens; each token carries its pixel's 5x5 neighbourhood
(25 channels, zero outside the image), so HiP's per-element Linear
embedding sees a local pattern, as a convolution would. The class enters
HiP's processor as a label modality `(1, 10)` (DeepMind's
`HiPClassBottleneck`).

1. Train a `HiPClassifier` from scratch (the label masked, its
   reconstruction in the processor = the logits).
2. Pre-train a `HiPMaskedAutoencoder` on the training images (label input
   all zeros, as unlabelled data): half the tokens of every image are
   zeroed and the model reconstructs them; then fine-tune a classifier on
   the same backbone.
3. Compare both with logistic regression on the pixels.

`KERAS_BACKEND=jax|torch|tensorflow python examples/hip_digits.py [--seed N]`
"""

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from perceiver_keras import HiPBackbone
from perceiver_keras import HiPClassifier
from perceiver_keras import HiPMaskedAutoencoder
from perceiver_keras.models.hip.hip_presets import small_config

BATCH_SIZE = 32
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.05
RADIUS = 2  # 5x5 neighbourhoods: 25 channels per pixel token


def digit_sets(seed=0):
    """`(train, test)`, each `(images [N, 8, 8], labels [N])`, in [0, 1]."""
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    labels = digits.target.astype("int32")
    return ((images[order[:split]], labels[order[:split]]),
            (images[order[split:]], labels[order[split:]]))


def neighbourhoods(images, radius=RADIUS):
    """`[N, H, W]` -> `[N, H * W, (2r + 1)^2]`: every pixel with the pixels
    within `radius` of it (zero outside the image). With one raw value per
    token, each cross-attention head can only form positive-weighted
    averages of pixel values (0.94 held out, below logistic regression)."""
    n, height, width = images.shape
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius)))
    size = 2 * radius + 1
    shifted = [padded[:, i:i + height, j:j + width]
               for i in range(size) for j in range(size)]
    return np.stack(shifted, -1).reshape(n, height * width, size * size)


def small_hip(seed=0):
    keras.utils.set_random_seed(seed)
    return HiPBackbone(**small_config(
        {"image": (64, (2 * RADIUS + 1) ** 2), "label": (1, 10)},
        4,                               # 4 groups of 16 pixels (2 rows)
        z_index_dim=[8, 16, 8], num_z_channels=[32, 64, 32],
        num_embedding_channels=32, num_self_attends_per_block=[1, 2, 1],
        num_cross_attend_heads=[4, 4, 4],  # 1 head (3x3 tokens): 0.950
        label_modalities=["label"],
    ))


def warmup_cosine(peak, steps):
    """AdamW at `peak` after a 10% linear warm-up, cosine decay to 0: at a
    constant 1e-3 the raw-pixel HiP underfit (0.95 training accuracy after
    15 epochs); weight decay trims the overfitting that follows."""
    return keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=peak, warmup_steps=steps // 10,
    ), weight_decay=WEIGHT_DECAY)


def pretrain(backbone, tokens, epochs):
    mae = HiPMaskedAutoencoder(backbone, masking_ratio={"image": 0.5},
                               seed=0)
    mae.compile()
    unlabelled = {"image": tokens,
                  "label": np.zeros((len(tokens), 1, 10), "float32")}
    before = mae.evaluate(unlabelled, batch_size=64, verbose=0,
                          return_dict=True)["loss"]
    mae.fit(unlabelled, batch_size=64, epochs=epochs, verbose=0)
    after = mae.evaluate(unlabelled, batch_size=64, verbose=0,
                         return_dict=True)["loss"]
    return before, after


def classifier_accuracy(backbone, train, test, epochs):
    classifier = HiPClassifier(backbone)
    steps = epochs * -(-len(train[0]) // BATCH_SIZE)
    classifier.compile(optimizer=warmup_cosine(LEARNING_RATE, steps))
    classifier.fit({"image": train[0]}, train[1], batch_size=BATCH_SIZE,
                   epochs=epochs, verbose=0)
    return classifier.evaluate({"image": test[0]}, test[1], verbose=0,
                               return_dict=True)["accuracy"]


def logistic_regression_accuracy(train, test):
    model = LogisticRegression(max_iter=2000)
    model.fit(train[0].reshape(len(train[0]), -1), train[1])
    return model.score(test[0].reshape(len(test[0]), -1), test[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = digit_sets()
    print(f"backend {keras.backend.backend()}: {len(train[0])} training, "
          f"{len(test[0])} held-out digits")
    linear = logistic_regression_accuracy(train, test)
    train_tokens = (neighbourhoods(train[0]), train[1])
    test_tokens = (neighbourhoods(test[0]), test[1])

    scratch = classifier_accuracy(small_hip(args.seed), train_tokens,
                                  test_tokens, args.epochs)
    print(f"held-out accuracy: HiP from scratch {scratch:.3f}, logistic "
          f"regression {linear:.3f}", flush=True)
    if args.pretrain_epochs:
        backbone = small_hip(args.seed)
        before, after = pretrain(backbone, train_tokens[0],
                                 args.pretrain_epochs)
        print(f"MAE loss on masked tokens: {before:.4f} -> {after:.4f} "
              f"(predicting 0: {np.mean(train_tokens[0] ** 2):.4f})")
        pretrained = classifier_accuracy(backbone, train_tokens, test_tokens,
                                         args.epochs)
        print(f"held-out accuracy: HiP pre-trained + fine-tuned "
              f"{pretrained:.3f}")


if __name__ == "__main__":
    main()
