"""Where a caller may act on one rank's run without `run_rank` knowing why: before a phase's work
(`init`: before the process group, `setup`: before the transport's set-up, `iteration`: before an
iteration's transfer) and after an iteration's transfer, before it is verified.

The default does nothing. Fault injection for the tests (refit_core/execution/faults.py) is the one
user today; a profiler's start/stop marks would be another."""

from __future__ import annotations

from typing import Sequence

from refit_core.execution.transports.base import ShardPart


class RankHooks:
    """No-op hooks; subclass and override what you need."""

    def before(self, phase: str, iteration: int = 0) -> None:
        """Called before the work of `phase` ("init", "setup" or "iteration" with its index from 0)."""

    def after_transfer(self, iteration: int, destination_parts: Sequence[ShardPart]) -> None:
        """Called after iteration `iteration`'s transfer, before its destination bytes are verified."""


NO_HOOKS = RankHooks()
