"""FP8 destinations: the sender quantises the slices it owns, then any byte-generic transport moves them.

`QuantisingSender` wraps a transport (nccl, gloo, nvshmem) prepared on the wire shards (wire.py):
FP8 weights plus their scale rows, laid out like any shard buffer. The rank's own source shards
stay BF16 in a buffer of their own (what the engine fills, as training would), held by an
`Fp8Source` (fp8_source.py), which computes the scales each iteration (block maxima, one all-reduce
for the blocks a source TP boundary cuts, amax / 448) and produces wire bytes on demand.

- Two-sided transports (nccl, gloo: `Method.two_sided`) take the source as their `wire_source`:
  they quantise each staging bucket as they pack it (round k+1 while round k is on the wire) and
  each local copy inside the copy. No send image exists: memory beyond the shards is the staging
  (within the bucket size) plus the scales.
- One-sided transports (nvshmem), whose peers read a PE's memory at any time, keep a send image:
  the transport's own source buffer, written whole by one `FillStep` before the barrier.

The iteration's `quantise` phase is the scale pass (and, one-sided, the image); a two-sided
transport's quantisation of the buckets is inside its `pack` and `local` phases. After the
transfer the scales (and a send image) are poisoned (0xFF: NaN in e4m3 and float32), so an
iteration whose quantisation skipped a byte cannot pass on the previous iteration's values.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from refit_core.execution.fp8_layout import gather_layout
from refit_core.execution.fp8_source import Fp8Source, FillStep
from refit_core.execution.transports.base import IterationStats, RankContext, Transport, TransportReport
from refit_core.planning import methods


class QuantisingSender(TransportReport):
    """A transport whose source bytes are the rank's BF16 shards quantised to the wire's FP8."""

    def __init__(self, inner: Transport) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.setup_phase = getattr(inner, "setup_phase", f"{inner.name} transport set-up")

    def prepare(self, ctx: RankContext) -> None:
        self.ctx = ctx
        plan = ctx.plan
        self.one_sided = not methods.method(self.inner.name).two_sided
        self.cuda = ctx.device.type == "cuda"
        holds = plan.world.source.local(ctx.rank) is not None
        allocated = (lambda: torch.cuda.memory_allocated(ctx.device)) if self.cuda else (lambda: 0)
        m0 = allocated()
        self.source = Fp8Source(plan, ctx.rank, ctx.device, ctx.active_group) if holds else None
        own = allocated() - m0 - (self.source.train_buf.numel() if self.source is not None else 0)
        if self.source is not None and not self.one_sided:
            self.inner.wire_source = self.source  # type: ignore[attr-defined]
        self.inner.prepare(ctx)
        m1 = allocated()
        self.image = list(self.inner.source_parts) if self.one_sided else []
        self.fills: list[FillStep] = [self.source.step(self.source.image_blocks(st), buf) for buf, st in self.image] \
            if self.source is not None else []
        inner_measured = self.inner.measured_extra_bytes
        # GPU: the transport's own measure plus what the quantiser allocated (scales, tables, descriptors)
        self.measured_extra_bytes = None if inner_measured is None or not self.cuda else \
            inner_measured + own + allocated() - m1
        self.destination_parts = self.inner.destination_parts
        self.source_parts = [(self.source.train_buf, self.source.train)] if self.source is not None else []
        _, self.vector_len = gather_layout(plan)
        image_bytes = sum(st.nbytes for _, st in self.image)
        own = self.source.extra_bytes + sum(f.desc_bytes for f in self.fills) if self.source is not None \
            else 4 * self.vector_len
        self.extra_bytes = self.inner.extra_bytes + image_bytes + own
        src = self.source
        self.info = {**self.inner.info, "precision": plan.precision, "send_image_bytes": image_bytes,
                     "scale_bytes": src.scale_buf.numel() if src is not None else 0,
                     "fp8_source_bytes": own,
                     "quantised_weights": len(src.weights) if src is not None else 0,
                     "gathered_amax_floats": self.vector_len,
                     "quantiser": ("triton" if src.triton else "torch") if src is not None else None}
        backend = dist.get_backend(ctx.active_group) if self.vector_len and dist.is_initialized() else None
        self.vector_device = ctx.device if backend == "nccl" else torch.device("cpu")
        self._poison()

    def _poison(self) -> None:
        if self.source is not None:
            self.source.poison()
        for buf, _ in self.image:
            buf.fill_(0xFF)

    def quantise(self) -> int:
        """The scales (every active rank joins the gather's all-reduce), then a send image if any."""
        if self.source is not None:
            self.source.scales()
        elif self.vector_len:
            vector = torch.zeros(self.vector_len, dtype=torch.float32, device=self.vector_device)
            dist.all_reduce(vector, op=dist.ReduceOp.MAX, group=self.ctx.active_group)
        return sum(f() for f in self.fills)

    def iteration(self) -> IterationStats:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            launches = self.quantise()
            end.record()
        else:
            t0 = time.perf_counter()
            launches = self.quantise()
            q_ms = (time.perf_counter() - t0) * 1e3
        if self.one_sided:
            # Peers read (pull) or the transport's own stream copies (push) the send image: every PE's
            # image must be written before any copy starts. Two-sided transports order this themselves.
            if self.cuda:
                end.synchronize()
            dist.barrier(group=self.ctx.active_group)
        stats = self.inner.iteration()
        if self.cuda:
            end.synchronize()
            q_ms = start.elapsed_time(end)
        self._poison()
        return IterationStats(q_ms + stats.time_ms, {"quantise": q_ms, **stats.phases_ms}, stats.launches + launches)

    def close(self) -> None:
        self.inner.close()
        self.image, self.fills, self.source_parts, self.destination_parts = [], [], [], []
        self.source = None


def for_precision(transport: Transport, precision: str) -> Transport:
    """The transport itself for BF16 destinations; wrapped in a quantising sender for FP8."""
    return transport if precision == "bf16" else QuantisingSender(transport)
