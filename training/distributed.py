"""DistributedDataParallel when launched by ``torchrun``; plain single process otherwise.

``torchrun --nproc-per-node 2 -m clsloc.cli train ...`` runs the same command
on several processes: each takes a shard of every epoch
(``DistributedSampler``), gradients are averaged by DDP, every rank evaluates
the (small) validation set so early stopping agrees everywhere, and only rank
0 writes the run directory and prints. The global batch size stays
``--batch-size`` (each rank gets batch_size / world_size), so the metrics match
a single-process run within noise. Backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init() -> bool:
    """Join the process group torchrun set up; True when distributed."""
    if not launched_by_torchrun() or is_distributed():
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``module`` when distributed, the module itself otherwise."""
    if not is_distributed():
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def sampler(dataset, *, seed: int):
    """A shuffling shard of ``dataset`` per rank, or None (the loader shuffles itself)."""
    if not is_distributed():
        return None
    return torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)
