"""Data-parallel training under torchrun (docs/design.md §8): process group, rank helpers, all-reduce helpers.

`torchrun --nproc-per-node N -m glactl train ...` starts N copies of glactl with RANK, WORLD_SIZE
and LOCAL_RANK set. Each copy joins one process group (gloo on CPU, nccl on CUDA with device
cuda:LOCAL_RANK) and wraps the model in DistributedDataParallel. The windows of a step are still
drawn from (seed, step) as in one process and split across ranks; rank 0 alone logs and writes.

Without those variables (or with WORLD_SIZE=1) glactl is one process and every helper here is a
no-op that returns its input, so the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from glactl.errors import InputError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


@dataclass
class Distributed:
    """This process's place in a torchrun job: rank, world size, local rank; one process when world == 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # set once the process group is joined
    device: Any = None  # this rank's torch.device, once joined
    owns_group: bool = False  # whether start() created the process group (and close() should end it)

    @classmethod
    def from_env(cls) -> Distributed:
        """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (absent: one process)."""
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local = _env_int("LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise InputError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
        return cls(rank, world, local)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, evaluates for the record and writes files."""
        return self.rank == 0

    # ---- set-up and tear-down ------------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, nccl on CUDA); returns this rank's device."""
        if not self.enabled:
            return device
        import torch.distributed as dist

        if not dist.is_available():
            raise InputError("this PyTorch build has no torch.distributed; run one process (without torchrun)")
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise InputError(
                    f"LOCAL_RANK {self.local_rank} but only {count} CUDA device(s) here: "
                    f"use --nproc-per-node {count} or fewer"
                )
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise InputError(f"--device {device.type}: several processes need cpu (gloo) or cuda (nccl)")
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)
            self.owns_group = True
        self.backend = backend
        self.device = device
        return device

    def close(self) -> None:
        """Leave the process group (safe to call more than once, and in one process)."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.backend, self.owns_group = None, False

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train with: DistributedDataParallel over `model` (checkpoints keep `model` itself)."""
        if self.backend is None:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Parameters that some inputs leave unused (e.g. long-term memory on short windows) need the slow path.
        unused = any(getattr(m, "conditional_parameters", False) for m in model.modules())
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)

    # ---- synchronisation -------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. filling a cache); the others run it after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def no_sync(self, model: torch.nn.Module, sync: bool) -> Any:
        """Skip DDP's gradient all-reduce on micro-batches before the last (a no-op in one process)."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def _reduce(self, values: list[float], op: str) -> list[float]:
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor.tolist()

    def mean(self, value: torch.Tensor) -> float:
        """A scalar tensor averaged over ranks, as a float (the same on every rank)."""
        if self.backend is None:
            return value.item()
        return self._reduce([value.item()], "sum")[0] / self.world

    def sum(self, *values: float) -> list[float]:
        """Floats summed over ranks."""
        return list(values) if self.backend is None else self._reduce(list(values), "sum")

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (ranks must stop at the same step)."""
        return bool(flag) if self.backend is None else self._reduce([float(bool(flag))], "max")[0] > 0

    def from_main(self, value: float) -> float:
        """Rank 0's value of a float (e.g. its clock), the same on every rank."""
        if self.backend is None:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.item()

    def shard(self, items: list[Any]) -> list[Any]:
        """This rank's share of a list: items rank, rank + world, ..."""
        return items[self.rank :: self.world]
