"""Data parallel helpers: the process group's ranks (:class:`DistEnv`), gathering features across ranks (with
their gradients where the loss needs them), averaging gradients, and an any-rank flag."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F


class DistEnv:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialized_here = False

    def setup(self, device: torch.device, timeout_min: float = 60.0) -> None:
        """Join the process group. On CUDA the rank's GPU becomes the current device first (the
        pin-memory thread, NCCL's communicator and the barriers use it) and is bound to the group
        (``device_id``), so no rank touches GPU 0 by accident."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if self.world > 1 and not dist.is_initialized():
            cuda = device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min),
                                    device_id=device if cuda else None)
            self.initialized_here = True

    def teardown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.barrier()  # no rank tears down while another is still in a collective
            dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0


def gather(x: torch.Tensor, world: int, with_grad: bool) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order).

    Ranks may hold different numbers of rows (an unreadable image dropped on one rank):
    rows are padded to the largest count for the collective and trimmed afterwards.
    """
    if world == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(v.item()) for v in sizes]
    longest = max(sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, longest - x.shape[0])) if x.shape[0] < longest else x
    if with_grad:
        parts = _GatherWithGrad.apply(padded.contiguous()).split(longest)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:k] for p, k in zip(parts, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's rows.

    Needed when the ranks' losses differ (``local_loss``): this rank's rows are negatives in
    the other ranks' losses. Unlike ``torch.distributed.nn.all_gather`` the graph holds no
    reference to the process group (the default group is used when backward runs), and the
    backward is one all-reduce, which every backend supports (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = (dist.get_rank() * x.shape[0], x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start:start + n]


def all_reduce_grads(params: list, world: int) -> None:
    """Average gradients over ranks with one flat all-reduce (the few parameters outside DDP)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
