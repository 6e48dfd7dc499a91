"""Distributed training: one process per device under torchrun (DDP, or FSDP2 with ``--fsdp``), or one process.

Every rank computes its slice of the same global batch; rank 0 logs and saves. The helpers here hide the
DDP/FSDP differences from the trainer: wrapping the model, gathering a full state to save, loading one back.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from perceiverar.model import PerceiverAR


@dataclasses.dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank and device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum_(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (a list of one without torchrun)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def setup_dist(device_arg: str) -> Dist:
    """Read torchrun's environment, pick the device (``auto``: cuda:LOCAL_RANK or CPU), join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None and world > 1:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


class LossModule(nn.Module):
    """model.loss behind forward(), so DDP / FSDP see the whole step as one forward call."""

    def __init__(self, model: PerceiverAR):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, loss_mask: torch.Tensor | None = None,
                n_latents: int | None = None) -> torch.Tensor:  # fmt: skip
        return self.model.loss(tokens, features, loss_mask=loss_mask, n_latents=n_latents)


def wrap_model(model: PerceiverAR, dd: Dist, *, fsdp: bool, compile: bool) -> nn.Module:
    """The module the training step calls: the loss, sharded (FSDP2) or replicated (DDP), maybe compiled."""
    net: nn.Module = LossModule(model)
    if fsdp:
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model.cross)  # the full forward computes keys/values inside cross.forward
        fully_shard(model)  # the root: embeddings, norm and head
    if compile:
        net = torch.compile(net)
    if dd.world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        net = DDP(net, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    return net


def full_state(model: nn.Module, opt: torch.optim.Optimizer, *, fsdp: bool) -> tuple[dict, dict]:
    """The whole model and optimizer state (gathered to CPU under FSDP), as a one-process run would save it."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        )  # fmt: skip

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)
    return model.state_dict(), opt.state_dict()


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict, *, fsdp: bool) -> None:
    """Load a full optimizer state saved by :func:`full_state` (sharding it under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415

        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)
