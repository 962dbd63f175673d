"""Training on several processes with DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 train.py --grad-accum 2

torchrun starts one process per GPU (or CPU worker) and tells each its RANK, LOCAL_RANK and WORLD_SIZE through the
environment. Each holds a full copy of the model; DDP averages the gradients after each backward pass, so every copy
takes the same step and stays identical. Without torchrun there is one process and none of this is switched on."""
import os
from contextlib import suppress
from dataclasses import dataclass

import torch
import torch.distributed as dist

from errors import UserError


@dataclass
class Processes:
    rank: int = 0  # this process, 0..world_size-1; rank 0 evaluates, logs and saves
    local_rank: int = 0  # this process on its machine: which GPU it uses
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def is_main_process():
    """Rank 0, or the only process: the one that owns the run's files. Known before init_processes."""
    return int(os.environ.get("RANK", "0")) == 0


def init_processes(device):
    """Join the process group when launched by torchrun: (Processes, device), each process on its local rank's GPU."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # not launched by torchrun
        return Processes(), device
    procs = Processes(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if (backend := {"cuda": "nccl", "cpu": "gloo"}.get(device.type)) is None:
        raise UserError(f"torchrun training supports CUDA and CPU devices, not {device.type}")
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    # torchrun stops its workers with SIGTERM, which errors.run_main turns into
    # a KeyboardInterrupt: rank 0 saves, as on Ctrl-C, and all exit cleanly.
    dist.init_process_group(backend=backend)
    return procs, device


def shutdown(procs):
    """Leave the process group, all processes together: rank 0 evaluates and saves after the others are done, and a
    process that tore down its end meanwhile could abort ('terminate called without an active exception')."""
    if procs.enabled and dist.is_initialized():
        with suppress(Exception):  # a process already gone: nothing left to wait for
            dist.barrier()
        dist.destroy_process_group()


def mean_across(procs, values, device):
    """Average a list of floats over all processes (every process gets the result)."""
    if not procs.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / procs.world_size).tolist()


def replicas_identical(procs, model):
    """True when every process holds exactly the same parameters."""
    if not procs.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
