"""Test-only faults, from REFITCTL_FAULT='KIND:rank=R[:iteration=K][:phase=P]', injected through
`RankHooks` (refit_core/execution/hooks.py): the engine itself knows nothing of them.

KIND: corrupt (flip one bit of a destination after the transfer), raise, kill, hang. PHASE:
`iteration` (the default: before iteration K's transfer), `init` (before the process group is set
up: jobs/refit_job.py), `setup` (before the transport's set-up, e.g. NVSHMEM init)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from refit_core.execution.hooks import NO_HOOKS, RankHooks
from refit_core.planning.storage import Storage
from refit_core.execution.transports.base import ShardPart


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    iteration: int
    phase: str = "iteration"

    @classmethod
    def parse(cls, text: str) -> "Fault | None":
        """The fault REFITCTL_FAULT's text describes (the task's `TaskEnv.fault`), None for no text."""
        if not text:
            return None
        kind, *kv = text.split(":")
        opts = dict(x.split("=", 1) for x in kv)
        return cls(kind, int(opts.get("rank", 0)), int(opts.get("iteration", 0)), opts.get("phase", "iteration"))

    def hits(self, rank: int, phase: str, iteration: int = 0) -> bool:
        return self.rank == rank and self.phase == phase and (phase != "iteration" or self.iteration == iteration)


class FaultHooks(RankHooks):
    """The hooks that inject `fault` on `rank`, saying so (with the wall clock) through `log`."""

    def __init__(self, fault: Fault, rank: int, log: Callable[[str], None]) -> None:
        self.fault, self.rank, self.log = fault, rank, log

    def before(self, phase: str, iteration: int = 0) -> None:
        f = self.fault
        if not f.hits(self.rank, phase, iteration):
            return
        self.log(f"test fault {f.kind} injected (wall clock {time.time():.3f})")
        if f.kind == "raise":
            raise RuntimeError(f"injected fault: rank {f.rank} raised at iteration {f.iteration}")
        if f.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if f.kind == "hang":
            time.sleep(3600)

    def after_transfer(self, iteration: int, destination_parts: Sequence[ShardPart]) -> None:
        if self.fault.kind == "corrupt" and self.fault.hits(self.rank, "iteration", iteration) and destination_parts:
            corrupt(*destination_parts[0])


def fault_hooks(text: str, rank: int, log: Callable[[str], None]) -> RankHooks:
    """FaultHooks for the fault `text` describes (REFITCTL_FAULT, as the task's `TaskEnv.fault`), else the no-op hooks."""
    fault = Fault.parse(text)
    return FaultHooks(fault, rank, log) if fault is not None else NO_HOOKS


def corrupt(buf: torch.Tensor, storage: Storage) -> None:
    """Flip one bit of one element in the middle shard."""
    slot = storage.slots[len(storage.slots) // 2]
    i = slot.offset + (slot.nbytes // 2 // slot.itemsize) * slot.itemsize + slot.itemsize - 1
    buf[i: i + 1].bitwise_xor_(0x01)
