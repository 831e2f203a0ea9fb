"""Masked auto-encoding (MAE) pre-training of a HiP on any modalities."""

import keras
import numpy as np

from perceiver_keras.models.hip import hip_presets
from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.input_validation import is_array_data
from perceiver_keras.models.perceiver_task import PerceiverTask


class _MaskedBatches(keras.utils.PyDataset):
    """Batches `(masked inputs, inputs, masks)`.

    Training (`shuffle`) draws new masks every epoch, evaluation always the
    same ones. A batch's masks depend only on `(seed, [epoch,] index)`:
    Keras may read a batch twice (to learn the data's structure) and must
    see the same one.
    """

    def __init__(self, x, batch_size, shuffle, mask_fn, seed):
        super().__init__()
        self.x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}
        self.size = len(next(iter(self.x.values())))
        self.batch_size = batch_size or 32
        self.shuffle = shuffle
        self.mask_fn = mask_fn
        self.seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self.epoch = 0
        self.order = np.arange(self.size)
        if shuffle:
            np.random.default_rng([self.seed, 0]).shuffle(self.order)

    def __len__(self):
        return -(-self.size // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        batch = {k: v[rows] for k, v in self.x.items()}
        key = [self.seed, self.epoch, index] if self.shuffle else [
            self.seed, index]
        rng = np.random.default_rng(key)
        masked, masks = self.mask_fn(batch, rng)
        return masked, batch, masks

    def on_epoch_end(self):
        self.epoch += 1
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(self.order)


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPMaskedAutoencoder(PerceiverTask):
    """A `HiPBackbone` trained to reconstruct masked input elements.

    The model maps the modalities to their reconstructions (DeepMind's
    `input_reconstruction`: the reconstruction head queried with every
    element's position encoding). `fit(x)` takes the modalities only: each
    batch, a random `masking_ratio` of the elements of every masked modality
    (per example, exactly `round(ratio * M)` of them) is set to zero before
    the model sees it, and the loss is the mean squared error over the masked
    elements only (the masks are the sample weights), summed over the
    modalities. `fit(masked_x, x, masks)` (or a dataset of such triples)
    trains on inputs masked by the caller instead. The position
    encodings, not the values, tell the model where masked elements are.

    Args:
        backbone: a `HiPBackbone` (with or without label modalities).
        masking_ratio: a float for every masked modality, or
            `{modality: ratio}` to mask each at its own ratio.
        masked_modalities: names to mask (default: all, or the keys of a
            `masking_ratio` dict). Unmasked modalities are seen whole and
            carry no loss.
        seed: seed of the masks and the shuffling in `fit`.
        preprocessor: unused (None); kept for the keras-hub interface.
    """

    backbone_cls = HiPBackbone
    preprocessor_cls = None

    def __init__(
        self,
        backbone,
        masking_ratio=0.75,
        masked_modalities=None,
        seed=None,
        preprocessor=None,
        **kwargs,
    ):
        names = [n for n, _, _ in backbone.modalities]
        if isinstance(masking_ratio, dict):
            ratios = {str(k): float(v) for k, v in masking_ratio.items()}
            if masked_modalities is None:
                masked_modalities = list(ratios)
        else:
            ratios = {n: float(masking_ratio) for n in names}
        if masked_modalities is None:
            masked_modalities = names
        masked_modalities = [str(n) for n in masked_modalities]
        unknown = sorted(set(masked_modalities) - set(names))
        if unknown or not masked_modalities:
            raise ValueError(
                f"`masked_modalities` must be a non-empty subset of {names}. "
                f"Received: {masked_modalities}."
            )
        missing = [n for n in masked_modalities if n not in ratios]
        bad = {n: r for n, r in ratios.items() if not 0.0 < r < 1.0}
        if missing or bad:
            raise ValueError(
                "`masking_ratio` needs a ratio strictly between 0 and 1 for "
                f"every masked modality {masked_modalities}. Received: "
                f"masking_ratio={masking_ratio!r}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional model ===
        inputs = backbone.input
        outputs = backbone(inputs)
        reconstructions = {
            n: keras.layers.Identity(
                name=f"reconstruction_{n}", dtype=backbone.dtype_policy
            )(
                outputs[f"reconstruction/{n}"]
            )
            for n in names
        }
        super().__init__(inputs=inputs, outputs=reconstructions, **kwargs)

        # === Config ===
        self.masking_ratio = masking_ratio
        self.masked_modalities = masked_modalities
        self.seed = seed
        self._ratios = ratios

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Also builds the built-in architectures (`hip_16`, ...;
        `load_weights=False`); `kwargs` go to the backbone, except the
        task's own `masking_ratio`, `masked_modalities`, `seed`."""
        if hip_presets.is_hip_preset(preset):
            task_keys = ("masking_ratio", "masked_modalities", "seed")
            task_kwargs = {k: kwargs.pop(k) for k in task_keys if k in kwargs}
            backbone = HiPBackbone.from_preset(preset, load_weights, **kwargs)
            return cls(backbone, **task_kwargs)
        return super().from_preset(preset, load_weights=load_weights,
                                   **kwargs)

    def validate_inputs(self, inputs):
        return self.backbone.validate_inputs(inputs)

    def mask(self, inputs, rng=None):
        """`(masked_inputs, masks)`: masks `[B, M]` float32, 1 = masked
        (value zeroed, counted in the loss); zeros for unmasked modalities.
        `rng`: a NumPy Generator (default: one seeded with `seed`).
        In `fit`, batch i of epoch e uses `default_rng([s, e, i])`, in
        `evaluate` `default_rng([s, i])`, `s` derived from `seed`."""
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        masked, masks = {}, {}
        for name, index_dim, _ in self.backbone.modalities:
            x = np.asarray(inputs[name])
            if name not in self.masked_modalities:
                masked[name] = x
                masks[name] = np.zeros(x.shape[:2], np.float32)
                continue
            count = int(round(self._ratios[name] * index_dim))
            ranks = rng.random(x.shape[:2]).argsort(axis=1).argsort(axis=1)
            m = ranks < count
            masked[name] = np.where(m[..., None], 0, x).astype(x.dtype)
            masks[name] = m.astype(np.float32)
        return masked, masks

    def _masked_batches(self, x, y, sample_weight, batch_size, shuffle):
        if sample_weight is not None:
            raise ValueError(
                "HiPMaskedAutoencoder masks `x` itself and weights the loss "
                "by its masks: pass `sample_weight` only together with `y` "
                "(inputs you masked yourself). Received sample_weight "
                "without y."
            )
        if not is_array_data(x):
            return x  # a dataset of (masked x, x, masks) made by the user
        x = self.validate_inputs(x)
        return _MaskedBatches(x, batch_size, shuffle, self.mask, self.seed)

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None,
            validation_data=None, shuffle=True, **kwargs):
        if validation_data is not None and not isinstance(
            validation_data, tuple
        ):
            validation_data = self._masked_batches(
                validation_data, None, None, batch_size, False
            )
        if y is not None:
            return keras.Model.fit(
                self, x, y, batch_size=batch_size,
                sample_weight=sample_weight, shuffle=shuffle,
                validation_data=validation_data, **kwargs,
            )
        batches = self._masked_batches(x, y, sample_weight, batch_size,
                                       shuffle)
        return keras.Model.fit(self, batches,
                               validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None,
                 **kwargs):
        if y is not None:
            return keras.Model.evaluate(
                self, x, y, batch_size=batch_size,
                sample_weight=sample_weight, **kwargs,
            )
        batches = self._masked_batches(x, y, sample_weight, batch_size, False)
        return keras.Model.evaluate(self, batches, **kwargs)

    def compile(self, optimizer="auto", loss="auto", **kwargs):
        """Defaults: Adam(1e-3), mean squared error per modality."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            # Mean over the masked elements (the masks are the weights).
            loss = {
                n: keras.losses.MeanSquaredError(
                    reduction="mean_with_sample_weight", name=f"{n}_mse"
                )
                for n, _, _ in self.backbone.modalities
            }
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "masking_ratio": self.masking_ratio,
                "masked_modalities": self.masked_modalities,
                "seed": self.seed,
            }
        )
        return config
