"""The Perceiver Resampler as a set pooling head, against mean pooling.

Each example is a set of 4 to 12 points in the plane (padded to 12, with a
padding mask), drawn around two of four cluster centres at 0, 90, 180 and
270 degrees, in random proportions. The label says whether the two
clusters are opposite (0 and 180, or 90 and 270) or adjacent. The mean of
a set says little about it (opposite pairs average to points along an
axis, adjacent pairs to points off the axes, overlapping once proportions
vary), so mean pooling + a linear classifier stays far from perfect; one
resampler latent can attend to each cluster it finds.

    KERAS_BACKEND=jax python examples/resampler_set_pooling.py
"""

import keras
import numpy as np

from perceiver_keras import PerceiverResamplerBackbone
from perceiver_keras import PerceiverResamplerEncoder

MAX_POINTS = 12


def cluster_sets(n, seed):
    rng = np.random.default_rng(seed)
    centres = 2.0 * np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], "float32")
    x = np.zeros((n, MAX_POINTS, 2), "float32")
    mask = np.zeros((n, MAX_POINTS), bool)
    y = rng.integers(0, 2, size=n).astype("int32")  # 1 = opposite clusters
    for i in range(n):
        first = rng.integers(4)
        second = (first + 2) % 4 if y[i] else (first + rng.choice([1, 3])) % 4
        size = rng.integers(4, MAX_POINTS + 1)
        which = np.where(rng.random(size) < rng.uniform(0.2, 0.8),
                         first, second)
        which[0], which[1] = first, second  # both clusters present
        x[i, :size] = centres[which] + 0.3 * rng.normal(size=(size, 2))
        mask[i, :size] = True
    return x, mask, y


def mean_pool_linear_accuracy(train, test, steps=2000, lr=0.5):
    """Logistic regression on the masked mean of each set."""

    def pooled(x, mask):
        mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return np.concatenate([mean, np.ones((len(x), 1))], axis=1)

    (x, m, y), (xt, mt, yt) = train, test
    features, w = pooled(x, m), np.zeros(3)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-features @ w))
        w -= lr * features.T @ (p - y) / len(y)
    return float(((pooled(xt, mt) @ w > 0) == yt).mean())


def resampler_accuracy(train, test, epochs=12, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = PerceiverResamplerBackbone(
        feature_dim=2, hidden_dim=32, num_latents=1, num_layers=2,
        num_heads=4, head_dim=8,
    )
    pool = PerceiverResamplerEncoder(backbone, output_dim=2)
    pool.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    (x, m, y), (xt, mt, yt) = train, test
    pool.fit({"inputs": x, "padding_mask": m}, y[:, None], epochs=epochs,
             batch_size=32, verbose=0)
    logits = pool.predict({"inputs": xt, "padding_mask": mt}, verbose=0)
    return float((logits[:, 0].argmax(-1) == yt).mean())


if __name__ == "__main__":
    train, test = cluster_sets(1024, seed=0), cluster_sets(512, seed=1)
    print(f"mean pooling + linear: {mean_pool_linear_accuracy(train, test):.3f}")
    print(f"resampler (1 latent):  {resampler_accuracy(train, test):.3f}")
