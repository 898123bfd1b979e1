"""Data-parallel training across processes with PyTorch's own engine (``torchrun`` + DDP).

``torchrun --nproc_per_node N -m SSLSegmentLib train ...`` starts N copies of the command;
each reads its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins one process group (``nccl`` on GPUs, ``gloo`` on CPU). Then:

- every rank builds the same networks, and the whole method state (students, EMA teachers,
  second networks, discriminators) is broadcast from rank 0 once;
- each trainable network of the method (a child module with parameters that require a
  gradient) is wrapped in its own ``DistributedDataParallel`` *only while*
  ``training_step`` runs (:meth:`DataParallelNetworks.active`), so the method's code calls
  the wrappers and gradients are averaged across ranks during backward, while
  ``state_dict``, the EMA update, checkpoints and ``model.pt`` see the bare networks (no
  ``module.`` prefix). One DDP per network matches the trainer's one backward per parameter
  group (CPS's two networks, DAN's discriminator): each wrapper's gradients arrive in
  exactly one backward pass per step. Trainable parameters held outside any child module
  are averaged by hand after backward;
- identical averaged gradients and identical optimisers keep the students identical, so
  EMA teachers stay identical without any communication;
- BatchNorm becomes ``SyncBatchNorm`` on CUDA with more than one rank (on CPU PyTorch has
  no SyncBatchNorm; buffers are broadcast from rank 0 by DDP at each forward and once more
  at the end);
- small control messages (cancel flags, barriers, checksums) go through a ``gloo`` group,
  so they never synchronise the GPU.

Sampling is sharded per rank (see :func:`shard`); only rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistributedContext:
    """Where this process stands among the ranks (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    control_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives on the CPU control group (no-ops in a single process) -----------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control_group)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(value.item())

    def minimum(self, values: Sequence[int]) -> list[int]:
        """Element-wise minimum of integer lists over the ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.control_group)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.control_group)
        return gathered


def cuda_available() -> bool:
    return torch.cuda.is_available()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str, timeout_s: float = 1800) -> DistributedContext:
    """Join the process group torchrun describes (``MASTER_ADDR``/``PORT``, ``RANK``...);
    a single-process context when not launched by torchrun."""
    if not launched_by_torchrun():
        return DistributedContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = device_type == "cuda" and torch.cuda.is_available()  # else the trainer reports the missing GPU
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return DistributedContext(rank, world, local_rank, local_world, backend, control)


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: list, context: DistributedContext, what: str = "cases", log=None) -> list:
    """This rank's share ``items[rank::world]`` (like ``DistributedSampler``); every item
    when there are fewer items than ranks (each rank then draws from all of them)."""
    if not context.enabled:
        return list(items)
    if len(items) < context.world_size:
        if log and context.is_main:
            log.warning("%d %s for %d ranks: every rank samples from all of them", len(items), what,
                        context.world_size)
        return list(items)
    return list(items[context.rank::context.world_size])


@torch.no_grad()
def broadcast_state(module: nn.Module, context: DistributedContext) -> None:
    """Make every parameter and buffer of ``module`` equal to rank 0's."""
    if not context.enabled:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def state_checksum(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, bytes): equal states, equal sums."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def convert_batchnorm(method: nn.Module, device: torch.device, context: DistributedContext) -> nn.Module:
    """BatchNorm statistics over the global batch (``SyncBatchNorm``) on CUDA with several
    ranks; unchanged otherwise (PyTorch's SyncBatchNorm needs a GPU)."""
    if context.enabled and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return method


FIND_UNUSED = os.environ.get("SSLSEGMENT_DDP_FIND_UNUSED", "0") == "1"
"""Every registered method and network uses every trainable parameter in each step, so DDP
skips the graph traversal that looks for unused ones. A method that leaves some unused sets
the class attribute ``ddp_find_unused_parameters = True``; ``SSLSEGMENT_DDP_FIND_UNUSED=1``
turns the search on for every method."""

_SYNC_BUFFERS = ({"forward_sync_buffers": True}
                 if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                 else {"broadcast_buffers": True})
"""Rank 0's buffers at every forward (the keyword changed name in PyTorch 2.13)."""


class DataParallelNetworks:
    """One ``DistributedDataParallel`` per trainable child network of a method, swapped in
    while ``training_step`` runs (see the module docstring)."""

    def __init__(self, method: nn.Module, device: torch.device, context: DistributedContext,
                 find_unused_parameters: bool | None = None):
        self.method, self.context = method, context
        self.wrappers: dict[str, DistributedDataParallel] = {}
        if not context.enabled:
            self.loose: list[nn.Parameter] = []
            return
        device_ids = [device.index if device.index is not None else context.local_rank] if device.type == "cuda" else None
        if find_unused_parameters is None:  # a method may declare it needs the search (Method's attribute)
            declared = method.ddp_find_unused_parameters
            find_unused_parameters = FIND_UNUSED if declared is None else declared
        find_unused = bool(find_unused_parameters)
        covered: set[int] = set()
        for name, child in method.named_children():
            trainable = [p for p in child.parameters() if p.requires_grad]
            if not trainable:
                continue
            self.wrappers[name] = DistributedDataParallel(
                child, device_ids=device_ids, find_unused_parameters=find_unused, **_SYNC_BUFFERS)
            covered.update(id(p) for p in trainable)
        self.loose = [p for p in method.parameters() if p.requires_grad and id(p) not in covered]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The method's trainable networks are their DDP wrappers inside the block."""
        if not self.wrappers:
            yield
            return
        bare = {name: getattr(self.method, name) for name in self.wrappers}
        for name, wrapper in self.wrappers.items():
            self.method._modules[name] = wrapper
        try:
            yield
        finally:
            for name, module in bare.items():
                self.method._modules[name] = module

    def average_loose_gradients(self) -> None:
        """Average, by hand, gradients of trainable parameters outside any child network."""
        if not self.loose:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.loose]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.context.world_size
        offset = 0
        for p in self.loose:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    @torch.no_grad()
    def synchronise_buffers(self) -> None:
        """Rank 0's buffers everywhere (BatchNorm running statistics drift per rank on CPU)."""
        if self.context.enabled:
            for buffer in self.method.buffers():
                dist.broadcast(buffer, src=0)
