"""Classification with a HiP class bottleneck (DeepMind's
`HiPClassBottleneck`)."""

import keras
from keras import ops

from perceiver_keras.models.hip import hip_presets
from perceiver_keras.models.hip.hip_backbone import HiPBackbone
from perceiver_keras.models.hip.hip_backbone import validate_modalities
from perceiver_keras.models.perceiver_task import PerceiverTask


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPMaskedLabel(keras.layers.Layer):
    """Zeros `[B, index_dim, channels]`: the label input, fully masked."""

    def __init__(self, index_dim, channels, **kwargs):
        super().__init__(**kwargs)
        self.index_dim = int(index_dim)
        self.channels = int(channels)

    def call(self, reference):
        shape = (ops.shape(reference)[0], self.index_dim, self.channels)
        return ops.zeros(shape, dtype=self.compute_dtype)

    def compute_output_shape(self, reference_shape):
        return (reference_shape[0], self.index_dim, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"index_dim": self.index_dim, "channels": self.channels})
        return config


@keras.saving.register_keras_serializable(package="perceiver_keras")
class HiPClassifier(PerceiverTask):
    """Class logits read from a HiP's processor through a label modality.

    The backbone must have a label modality (`label_modalities`, shape
    `(1, num_classes)`): as in HiP's class-bottleneck training, the label
    enters the processor masked (zeros), and its reconstruction there is the
    class logits `[B, num_classes]`. The task's inputs are the other
    modalities. Only the encoder blocks, the processor and the label's head
    run: the decoder blocks and the main reconstruction head (DeepMind
    computes them too) do not affect the logits.

    Args:
        backbone: a `HiPBackbone` with `label_modalities`.
        label_modality: which label modality holds the classes (default: the
            first).
        preprocessor: unused (None); kept for the keras-hub interface.
    """

    backbone_cls = HiPBackbone
    preprocessor_cls = None

    def __init__(self, backbone, label_modality=None, preprocessor=None,
                 **kwargs):
        labels = backbone.label_modalities
        if not labels:
            raise ValueError(
                "HiPClassifier needs a backbone with a label modality "
                "(`label_modalities=[...]`, shape (1, num_classes)). "
                "Received a backbone without one."
            )
        label_modality = label_modality or labels[0]
        if label_modality not in labels:
            raise ValueError(
                f"`label_modality` must be one of {labels}. Received: "
                f"{label_modality!r}."
            )
        shapes = {n: (m, c) for n, m, c in backbone.modalities}
        if shapes[label_modality][0] != 1:
            raise ValueError(
                f"The label modality {label_modality!r} must have index "
                f"dimension 1 (one label per example). Received shape "
                f"{shapes[label_modality]}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.masked_labels = {
            n: HiPMaskedLabel(*shapes[n], dtype=backbone.dtype_policy,
                              name=f"masked_{n}")
            for n in labels
        }
        self.logits_layer = keras.layers.Reshape(
            (shapes[label_modality][1],), dtype=backbone.dtype_policy,
            name="logits",
        )

        # === Functional model ===
        inputs = {n: backbone.input[n] for n in backbone.input_modalities}
        reference = inputs[backbone.input_modalities[0]]
        full = dict(inputs)
        full.update({n: layer(reference)
                     for n, layer in self.masked_labels.items()})
        self.label_reader = backbone.submodel(
            f"reconstruction/{label_modality}", name="label_reader"
        )
        logits = self.logits_layer(self.label_reader(full))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.label_modality = label_modality

    @property
    def num_classes(self):
        return self.output.shape[-1]

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Also builds the built-in architectures (`hip_16`, ...;
        `load_weights=False`) with a label modality `label`
        `(1, num_classes)`; pass `num_classes=` (default 1000)."""
        if hip_presets.is_hip_preset(preset):
            num_classes = kwargs.pop("num_classes", 1000)
            label_modality = kwargs.pop("label_modality", None)
            if "modalities" not in kwargs:
                kwargs["modalities"] = hip_presets.DEFAULT_MODALITIES + [
                    ["label", 1, num_classes]
                ]
                kwargs.setdefault("label_modalities", ["label"])
            backbone = HiPBackbone.from_preset(preset, load_weights, **kwargs)
            return cls(backbone, label_modality=label_modality)
        return super().from_preset(preset, load_weights=load_weights,
                                   **kwargs)

    def validate_inputs(self, inputs):
        labels = self.backbone.label_modalities
        return validate_modalities(
            [m for m in self.backbone.modalities if m[0] not in labels],
            inputs, "HiPClassifier (the label is predicted, not an input)",
        )

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto",
                **kwargs):
        """Defaults: Adam(1e-3), sparse categorical cross-entropy on the
        logits, accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy("accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def get_config(self):
        config = super().get_config()
        config["label_modality"] = self.label_modality
        return config
