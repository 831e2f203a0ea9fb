"""transformers' PyTorch Perceiver vs perceiver_keras on torch, JAX, TensorFlow.

    python benchmarks/compare_transformers.py            # ~11 min on 2 idle cores
    python benchmarks/compare_transformers.py --quick    # tiny sizes, ~3 min
    python benchmarks/compare_transformers.py --workloads language-mlm \
        --frameworks transformers jax --repeats 5 --no-write

Same weights, same inputs, one machine, one run. Each transformers model
is built with seeded random weights and written with `save_pretrained`;
the Keras side loads that directory with `PerceiverTask.from_preset` (or
`PerceiverBackbone.from_preset` for a bare `PerceiverModel`), the project's
transformers loader. Before a time counts, the Keras outputs are compared
with transformers' (max|diff| <= 2e-5 * max(1, max|ref|)); the verdict is a
column of every table.

Workloads (WORKLOADS below; `--quick` shrinks every size):

- vision-fourier: `PerceiverForImageClassificationFourier` as
  deepmind/vision-perceiver-fourier (224x224 pixels + Fourier features =
  50,176 inputs of 261 channels, 512 latents x 1024, 8 blocks x 6
  self-attention layers, 1000 classes), inference at batch 1 and 4.
- language-mlm: `PerceiverForMaskedLM` with `PerceiverConfig()`'s defaults
  (2048 bytes, d_model 768, 256 latents x 1280, 26 self-attention layers),
  inference at batch 1.
- image-training: one training step (forward, backward, Adam update,
  cross-entropy) of a mid-size `PerceiverForImageClassificationLearned`
  (64x64 images, 256 latents x 512), batch 8.
- encoder-scaling: a bare `PerceiverModel` (inputs `[1, M, 64]`, 512
  latents x 1024, 8 cross-attention heads, one self-attention layer) for
  M = 1k .. 1M: forward time and peak resident memory.

Each framework runs in its own child process (KERAS_BACKEND is fixed per
process; transformers gets one too), with the same thread count. Times are
medians of timed runs after one warm-up call (the warm-up, which includes
tracing and compilation, is reported separately). Throughput ratios are
transformers' median time / ours, from the same run. GFLOP/s use the
analytic FLOP count of `forward_flops` (checked against torch's FLOP
formulas on the products transformers' warm-up call dispatches) and are
compared with the machine's float32 matmul rate, measured at the start.
See benchmarks/README.md; the code is the package
`benchmarks/throughput/`.
"""

import os
import sys

# The package beside this script (benchmarks/throughput/), also in the
# children, which run this file again with --child.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
