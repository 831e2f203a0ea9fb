"""PyTorch: `DistributedDataParallel` (gloo) over 2 processes, as in Keras'
guide "Multi-GPU distributed training with PyTorch": the Keras model is a
`torch.nn.Module`, wrapped in DDP, trained by a plain torch loop; each
process takes one half of every batch.

Run by tests/test_distribution.py in a subprocess. Prints one JSON line
(the last line of stdout): the step losses and final weights' scaled
max|diff| of the 2-process run against the same loop in one process.
"""

import json
import os
import socket
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from distribution_jax_check import make_classifier  # noqa: E402
from distribution_jax_check import point_sets  # noqa: E402

BATCH, EPOCHS, LEARNING_RATE = 16, 2, 0.05


class TorchModule(torch.nn.Module):
    """A Keras model as a torch module whose `parameters()` are its weights.

    keras-hub models set attributes with `object.__setattr__` while they
    are built on torch, so torch never registers the model's parameter
    dict: `model.parameters()` is empty. Registering the trainable
    variables' tensors here gives DDP and torch optimizers what to update.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.weights = torch.nn.ParameterList(
            [v.value for v in model.trainable_weights])

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def train(model, x, y, rank=0, world_size=1):
    """SGD on batches of BATCH rows in order; this process's share of each
    batch. Returns the losses of the whole batches (averaged over ranks)."""
    module = TorchModule(model)
    optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
    if world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(module)
    share = BATCH // world_size
    losses = []
    for _ in range(EPOCHS):
        for start in range(0, len(x), BATCH):
            rows = slice(start + rank * share, start + (rank + 1) * share)
            logits = module(torch.from_numpy(x[rows]))
            loss = torch.nn.functional.cross_entropy(
                logits, torch.from_numpy(y[rows]).long())
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over processes
            optimizer.step()
            total = loss.detach().clone()
            if world_size > 1:
                dist.all_reduce(total)
            losses.append(float(total) / world_size)
    return losses


def worker(rank, world_size, port, initial_path, output_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = make_classifier()
    model.set_weights(list(np.load(initial_path).values()))
    x, y = point_sets(32, 0)
    losses = train(model, x, y, rank, world_size)
    if rank == 0:
        np.savez(output_path, losses=np.array(losses),
                 **{str(i): keras.ops.convert_to_numpy(w)
                    for i, w in enumerate(model.weights)})
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    keras.utils.set_random_seed(0)
    model = make_classifier()
    initial = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    x, y = point_sets(32, 0)
    losses = train(model, x, y)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    with tempfile.TemporaryDirectory() as tmp:
        initial_path = os.path.join(tmp, "initial.npz")
        output_path = os.path.join(tmp, "ddp.npz")
        np.savez(initial_path, **{f"w{i:03d}": w for i, w in enumerate(initial)})
        mp.spawn(worker, args=(2, free_port(), initial_path, output_path),
                 nprocs=2, join=True)
        ddp = dict(np.load(output_path))
    ddp_weights = [ddp[str(i)] for i in range(len(weights))]
    print(json.dumps({
        "one_device": losses,
        "ddp": ddp["losses"].tolist(),
        "ddp_max_weight_diff": max(
            float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))
            for a, b in zip(ddp_weights, weights)),
        "weights_moved": max(float(np.abs(a - b).max())
                             for a, b in zip(weights, initial)),
        "num_parameters": len(list(TorchModule(model).parameters())),
        "num_weights": len(model.trainable_weights),
    }))


if __name__ == "__main__":
    main()
