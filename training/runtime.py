"""Process-level runtime for a training run: device, DDP, seeds, precision, memory format.

`Runtime` is runtime state, kept out of the config (no `opt['rank']`): the config stays what the user
wrote, identical on every rank and in every checkpoint.

DDP. Under `torchrun`, the env vars RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are
set and `init_process_group` reads them ("env://"): nccl on CUDA, gloo on CPU. Networks are NOT
wrapped in DistributedDataParallel: GAN steps freeze D during the G step, call D several times
per backward and update two or four networks, which DDP's reducer handles badly. Instead (as
StyleGAN2-ADA/3 do) gradients are averaged explicitly with one flat all_reduce per network after
backward (`allreduce_grads`), and rank 0's initial weights are broadcast once. With norm=batch,
BatchNorm layers become SyncBatchNorm on CUDA so statistics span the global batch (the junyanz
reference keeps per-GPU statistics there); PyTorch's SyncBatchNorm has no CPU kernel, so on gloo/CPU
statistics stay per process and a warning says so.

Stopping. `StopRequest` turns Ctrl-C / SIGTERM into "stop after this step": the loop finishes the
step, writes a resumable snapshot and returns, and under DDP every rank stops after the same step.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import warnings
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Autocast context for forward passes (no-op when amp is "none")."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch tensor to the device (channels_last for 4-D tensors when enabled)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, net: nn.Module, norm: str) -> nn.Module:
        """Device, memory format, SyncBatchNorm (DDP + batch norm on CUDA) and rank-0 weights."""
        if self.distributed and norm == "batch":
            if self.device.type == "cuda":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            elif self.is_main:
                warnings.warn(
                    "norm=batch under DDP on CPU: SyncBatchNorm needs CUDA, so batch statistics "
                    "are per process",
                    RuntimeWarning,
                    stacklevel=2,
                )
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.distributed:
            with torch.no_grad():
                for t in list(net.parameters()) + list(net.buffers()):
                    dist.broadcast(t.data, src=0)
        return net


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_runtime(
    device: str = "auto",
    amp: str = "none",
    channels_last: bool = False,
    cudnn_benchmark: bool = True,
    deterministic: bool = False,
    seed: int = 0,
) -> Runtime:
    """Initialise DDP from torchrun's env vars (if present), pick the device, set seeds and flags.

    Raises:
        RuntimeError: CUDA requested but unavailable.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns = False
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(
            backend="nccl" if want_cuda else "gloo", init_method="env://", timeout=timedelta(minutes=30)
        )
        owns = True

    seed_all(seed)
    if deterministic:
        # cuBLAS needs this for deterministic matmuls; set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark and not deterministic)
        torch.backends.cudnn.deterministic = bool(deterministic)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Runtime(
        device=dev,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        owns_process_group=owns,
    )


def teardown_runtime(rt: Runtime) -> None:
    """Destroy the process group if this runtime created it."""
    if rt.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def allreduce_grads(rt: Runtime, *nets: nn.Module) -> None:
    """Average gradients across ranks (one flat all_reduce); missing grads count as zeros."""
    if not rt.distributed:
        return
    params = [p for net in nets for p in net.parameters() if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= rt.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_object(rt: Runtime, obj):
    """Rank 0's `obj` on every rank (used for the run directory name)."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    """Freeze/unfreeze a network (D is frozen during the generator step)."""
    for p in net.parameters():
        p.requires_grad_(flag)


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop after the current step and snapshot, so `--resume`
    continues exactly there (a second Ctrl-C stops immediately). Under DDP the ranks agree on the
    flag every step, so they all stop after the same step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def should_stop(self, rt: Runtime) -> bool:
        if not rt.distributed:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
