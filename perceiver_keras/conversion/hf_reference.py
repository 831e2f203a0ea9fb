"""transformers' own outputs, to compare a conversion against (needs torch).

`reference_outputs(directory, inputs)` runs the original model of a
`save_pretrained` directory on NumPy inputs laid out as for `run_inputs`
(transformers' `forward` arguments, nested dicts allowed) and names the
outputs the same way. The weights are read with the safe readers, so a
`.bin` file is not unpickled by torch here either.
"""

import numpy as np

from perceiver_keras.conversion.hf import architecture_of
from perceiver_keras.conversion.hf import read_config
from perceiver_keras.utils.hf_checkpoint import load_checkpoint_dir


def reference_model(directory):
    """The transformers model of `directory`, in eval mode."""
    import torch
    import transformers
    from transformers.models.perceiver import modeling_perceiver

    config_dict, _ = read_config(directory)
    architecture = architecture_of(config_dict)
    config = transformers.PerceiverConfig.from_pretrained(directory)
    tensors = load_checkpoint_dir(directory)
    if architecture == "PerceiverModel" and any(
        name.startswith("input_preprocessor.") for name in tensors
    ):
        model = transformers.PerceiverModel(
            config,
            input_preprocessor=modeling_perceiver.PerceiverTextPreprocessor(
                config
            ),
        )
    else:
        model = getattr(transformers, architecture)(config)
    state = {name: torch.from_numpy(np.array(value))
             for name, value in tensors.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_torch(value):
    import torch

    if isinstance(value, dict):
        return {k: to_torch(v) for k, v in value.items()}
    value = np.asarray(value)
    if value.dtype.kind in "iub":
        return torch.from_numpy(value.astype("int64"))
    return torch.from_numpy(value.astype("float32"))


def name_outputs(output):
    """A transformers output as `{"logits" | "logits/<modality>" |
    "last_hidden_state": array}`."""
    logits = getattr(output, "logits", None)
    if isinstance(logits, dict):
        return {f"logits/{k}": v.detach().numpy() for k, v in logits.items()}
    if logits is not None:
        return {"logits": logits.detach().numpy()}
    return {"last_hidden_state": output.last_hidden_state.detach().numpy()}


def reference_outputs(directory, inputs):
    import torch

    model = reference_model(directory)
    with torch.no_grad():
        output = model(**{k: to_torch(v) for k, v in inputs.items()})
    return name_outputs(output)
