"""--payload megatron: the run refits real Megatron-Core models' parameters through the library.

A transport wrapper the engine puts around the run's own transport (gloo or nccl). `prepare()`
builds both GPTModels of the run's layouts on this rank (refit_core/peers/megatron_build.py, not
timed, like allocating buffers: `info["build_ms"]`), maps their parameters to refitctl's names and
builds a `refit_core.library.Refit` over them with the run's plan and transport. The models'
parameters are then the shard buffers (adopted once: a bare GPTModel's parameters are separate
tensors), so the engine's fill, poison and bitwise verification act on the models themselves, and
each `iteration()` is one library call (its digest check off: the engine verifies every byte).
"""

from __future__ import annotations

import time
from typing import Any

from refit_core.errors import ConfigError
from refit_core.execution.transports.base import IterationStats, RankContext, Transport, TransportReport, whole
from refit_core.library import Refit
from refit_core.megatron import named_shards


class MegatronPayload(TransportReport):
    """The run's transport, refitting the parameters of Megatron-Core models built on this rank."""

    def __init__(self, inner: Transport) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.setup_phase = f"Megatron-Core models (--payload megatron) and {inner.name} transport set-up"
        self.refit: Refit | None = None
        self.models: Any = None

    def prepare(self, ctx: RankContext) -> None:
        from refit_core.peers import megatron_build as mb

        if mb.megatron_core() is None:
            raise ConfigError("--payload megatron needs megatron-core: pip install 'refitctl[megatron]'")
        t0 = time.perf_counter()
        self.models = mb.build_models(ctx.config)
        t1 = time.perf_counter()
        world = ctx.plan.world
        src, dst = self.models.source, self.models.destination
        for m in (src, dst):
            if m is not None and ctx.device.type == "cuda":
                m.to(ctx.device)
        self.refit = Refit.build(
            ctx.config, named_shards(src, world.source, ctx.rank, ctx.config) if src is not None else None,
            named_shards(dst, world.destination, ctx.rank, ctx.config) if dst is not None else None,
            verify=False, plan=ctx.plan, transport=self.inner, group=ctx.active_group)
        s, d = self.refit.source, self.refit.destination
        self.source_parts = whole(s.buffer, s.storage) if s else []
        self.destination_parts = whole(d.buffer, d.storage) if d else []
        self.extra_bytes = self.inner.extra_bytes
        self.measured_extra_bytes = self.inner.measured_extra_bytes
        self.info = {**self.inner.info, "payload": "megatron", "models": "megatron-core GPTModel",
                     "in_place": [b.in_place for b in (s, d) if b is not None],
                     "cast_to_bf16": sum(b.cast for b in (s, d) if b is not None),
                     "build_ms": round((t1 - t0) * 1e3, 3),
                     "bind_ms": round(self.refit.build_ms, 3)}

    def iteration(self) -> IterationStats:
        assert self.refit is not None, "prepare() first"
        stats = self.refit()
        return IterationStats(stats.time_ms, stats.phases_ms, stats.launches)

    def close(self) -> None:
        if self.refit is not None:
            self.refit.close()
        self.refit = self.models = None
        self.source_parts, self.destination_parts = [], []
