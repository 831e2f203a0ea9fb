"""transformers' own resampler module on a checkpoint's weights (needs
torch and transformers): the reference the command line compares with.

Only the resampler module is built (from the checkpoint's config), and it
is given the resampler's tensors as read by the safe reader, so comparing
never loads the multi-billion-parameter model around it.
"""

import numpy as np

from perceiver_keras.conversion.resampler import read_config
from perceiver_keras.conversion.resampler import read_resampler_tensors


def reference_module(directory):
    """`(module, model_type)`: transformers' resampler for `directory`,
    weights loaded, in eval mode."""
    import torch

    config = read_config(directory)
    tensors = read_resampler_tensors(directory, config)
    if config["model_type"] == "idefics":
        from transformers import IdeficsConfig
        from transformers.models.idefics.perceiver import (
            IdeficsPerceiverResampler,
        )

        hf_config = IdeficsConfig(**config)
        perceiver = hf_config.perceiver_config
        module = IdeficsPerceiverResampler(
            hf_config, hf_config.vision_config.embed_dim,
            perceiver.resampler_depth, perceiver.resampler_n_heads,
            perceiver.resampler_head_dim, perceiver.resampler_n_latents,
        )
    else:
        from transformers import Idefics2Config
        from transformers import Idefics2PerceiverConfig
        from transformers.models.idefics2.modeling_idefics2 import (
            Idefics2PerceiverResampler,
        )

        if config["model_type"] == "idefics2":
            perceiver = Idefics2Config(**config).perceiver_config
        else:
            perceiver = Idefics2PerceiverConfig(**config)
        perceiver._attn_implementation = "eager"
        module = Idefics2PerceiverResampler(perceiver)
    state = {name: torch.from_numpy(np.ascontiguousarray(value))
             for name, value in tensors.items()}
    module.load_state_dict(state, strict=True)
    return module.eval(), config["model_type"]


def reference_latents(directory, features, attention_mask=None):
    """transformers' resampler output for `features` `[B, M, C]`."""
    import torch

    module, model_type = reference_module(directory)
    context = torch.from_numpy(np.asarray(features, dtype=np.float32))
    with torch.no_grad():
        if model_type != "idefics":  # Idefics2 always takes a mask
            if attention_mask is None:
                attention_mask = np.ones(context.shape[:2], dtype=np.int64)
            mask = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))
            out = module(context=context, attention_mask=mask)
        else:
            if attention_mask is not None and not np.all(attention_mask):
                raise ValueError(
                    "transformers' IDEFICS resampler takes no attention "
                    "mask; pass all-ones `attention_mask` or none."
                )
            out = module(context)
    return out.numpy()
