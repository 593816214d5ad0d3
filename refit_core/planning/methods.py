"""Refit methods by name: what each needs and can do. The one place a method's name is looked up; no
other module compares it with a string.

A method says what planning and the orchestrator must know without running it: whether it needs CUDA, the
process-group backend its ranks join, how ranks share GPUs (planning/devices.py), whether every rank of the
world takes part (Megatron-Core's refit uses the WORLD group, idle ranks included), how its buffers count in
the memory fit (planning/memory.py), which measured ceiling bounds it (planning/ceilings.py), what it falls
back to on a machine without GPUs, and why it cannot run at all where that is so. It is data, below both
planning and execution (as Megatron-Core's resharding planner knows its copy services only as data):
`refit_core/execution/transports/registry.py` turns a method into a transport object.

Adding a transport: write refit_core/execution/transports/NAME.py (the Transport protocol of base.py) and
add one `Method` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from refit_core.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    transport: str  # "module:Class" of its transport; the class takes the method's name if `named`
    backend: Literal["nccl", "gloo"]  # the process group its ranks join
    needs_cuda: bool
    gpu_sharing: Literal["exclusive", "even"] | None  # one rank per GPU, PEs spread evenly, or no GPU
    buffers: Literal["bucket", "nvshmem-heap"]  # how its buffers count per GPU in the memory fit
    ceiling: Literal["nccl", "peer_copy"] | None  # the measured ceiling that bounds it; None: no link model (CPU)
    cpu_fallback: str | None = None  # what runs without GPUs when the method was not asked for by flag
    all_ranks: bool = False  # every rank of the world takes part (idle ranks too)
    named: bool = False  # the transport class takes the method's name
    refusal: str | None = None  # why it cannot run at all (one line), or None
    peer: bool = False  # another project's refit, run for comparison
    two_sided: bool = True  # sender and receiver both take part in each message (else one-sided: peers
    # read or write a PE's memory, so a PE's buffers must be ready before any peer starts)
    fp8: bool = False  # moves FP8 destinations (--rl-inference-precision fp8): byte-generic over wire shards
    relays: bool = False  # runs a relayed plan's second hop (planning/relay.py); else --relay auto plans none
    caller_transport: str | None = None  # "module:Class" (taking the method's name) that refits the caller's own
    # tensors (refit_core/library) where `transport` needs buffers of its own kind; None: `transport` does

    @property
    def uses_gpus(self) -> bool:
        return self.gpu_sharing is not None


_MEGATRON_NVSHMEM_REFUSAL = (
    "--refit-method megatron-nvshmem cannot run: megatron-core 0.16.1's NVSHMEM copy service imports "
    "cuda.core.experimental and needs kernels/chunked_kernel.cu, which its wheel (and sdist) do not "
    "ship: use megatron-nccl")

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("nvshmem", "one-sided NVSHMEM copies, one kernel per iteration (non-collocated; PEs may share GPUs)",
           "refit_core.execution.transports.nvshmem:NvshmemTransport", "gloo", True, "even", "nvshmem-heap", "peer_copy",
           cpu_fallback="gloo", fp8=True, two_sided=False,
           caller_transport="refit_core.execution.transports.staged:StagedTransport"),
    Method("nccl", "NCCL point-to-point: zero-copy runs plus packed buckets (one rank per GPU)",
           "refit_core.execution.transports.staged:StagedTransport", "nccl", True, "exclusive", "bucket", "nccl",
           cpu_fallback="gloo", named=True, fp8=True, relays=True),
    Method("gloo", "gloo point-to-point on the CPU, the same plan and staging as nccl",
           "refit_core.execution.transports.staged:StagedTransport", "gloo", False, None, "bucket", None, named=True,
           fp8=True, relays=True),
    Method("naive", "baseline: gather whole tensors, send whole, slice (over NVSHMEM)",
           "refit_core.execution.transports.naive:NaiveTransport", "gloo", True, "even", "nvshmem-heap", "peer_copy",
           cpu_fallback="gloo", two_sided=False),
    Method("megatron-nccl", "Megatron-Core's swap_model_weights over NCCL, for comparison",
           "refit_core.peers.megatron_transport:MegatronTransport", "nccl", True, "exclusive", "bucket", "nccl",
           cpu_fallback="megatron-gloo", all_ranks=True, named=True, peer=True),
    Method("megatron-gloo", "Megatron-Core's swap_model_weights over gloo on the CPU, for comparison",
           "refit_core.peers.megatron_transport:MegatronTransport", "gloo", False, None, "bucket", None,
           all_ranks=True, named=True, peer=True),
    Method("megatron-nvshmem", "Megatron-Core's NVSHMEM copy service (does not run from the 0.16.1 wheel)",
           "refit_core.peers.megatron_transport:MegatronTransport", "gloo", True, "even", "bucket", "peer_copy",
           all_ranks=True, named=True, refusal=_MEGATRON_NVSHMEM_REFUSAL, peer=True),
)}


def method(name: str) -> Method:
    """The method called `name`; a one-line ConfigError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown --refit-method {name!r}: use one of {', '.join(METHODS)}") from None


def method_help() -> str:
    """The --refit-method help: every method, with what it is."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
