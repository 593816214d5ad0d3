"""The sections of a RunConfig (refit_core/config.py): what is refit where, how the run is carried out, and what
it is given.

- `Layouts`: the source and destination layouts and the refit mode (what is refit where);
- `RunSettings`: how the run is carried out (method, iterations, buckets, timeouts, transport tuning);
- `Hardware`: what the run is given (GPUs, their memory, GPUs per node) and the link figures its prediction uses.

A setting keeps one flat name everywhere a user writes it (`--refit-method`, `method = "nccl"` in a TOML file,
`RunConfig.of(..., method="nccl")`, `REFITCTL_NVSHMEM_SYNC`): `SECTION` is the one table that says which
section holds it, derived from the sections' own fields. Planning layer only: no execution, no orchestrator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.timemodel import AMAX_GBPS, LOCAL_COPY_GBPS, NETWORK_GBPS, NVLINK_GBPS, QUANTISE_GBPS

DIRECT_MIN_BYTES = 4 << 20
"""Shortest run the staged transport sends zero-copy. One NCCL p2p op costs a few microseconds whatever its
size; 4 MiB takes about 11 us at 370 GB/s, while packing + unpacking it costs about 4 us of device copy."""


@dataclass(frozen=True)
class Layouts:
    """What is refit where: the training (source) and inference (destination) layouts, and whether the two
    models share GPUs."""

    source: ParallelLayout
    destination: ParallelLayout
    mode: RefitMode = RefitMode.NON_COLLOCATED


@dataclass(frozen=True)
class RunSettings:
    """How the run is carried out: every field has its flag (orchestrator/configs/flags.py)."""

    method: str = "nvshmem"
    """--refit-method: a name of refit_core/planning/methods.py's registry."""
    iterations: int = 3
    """--num-benchmark-iterations: timed iterations."""
    warmup: int = 1
    """--num-warmup-iterations: untimed iterations before them."""
    bucket_bytes: int = 1 << 30
    """--refit-bucket-size: the staging bucket per rank."""
    timeout_s: float = 60.0
    """--refit-timeout: longest a rank waits on a peer before the run fails."""
    inference_precision: str = "bf16"
    """--rl-inference-precision: the destination's weights, bf16 or fp8 (128x128 blocks, float32
    scales; refit_core/planning/precision.py), quantised by the sender and verified bitwise."""
    nvshmem_placement: str = "auto"
    """--nvshmem-placement: which role's shards live in NVSHMEM's symmetric heap (auto, push, pull, all;
    refit_core/planning/placement.py); env REFITCTL_NVSHMEM_PLACEMENT overrides it."""
    nvshmem_sync: str = "auto"
    """--nvshmem-sync: how an NVSHMEM iteration completes (auto, host, device; transports/nvshmem.py);
    env REFITCTL_NVSHMEM_SYNC overrides it."""
    staged_zero_copy: bool = True
    """--staged-zero-copy on|off: nccl/gloo send long contiguous runs straight between shard buffers (off: every
    byte is staged, the path before zero-copy, kept for before/after measurements)."""
    staged_direct_min_bytes: int = DIRECT_MIN_BYTES
    """--staged-direct-min-bytes: the shortest run sent zero-copy (default 4 MiB)."""
    gloo_shared_memory: str = "auto"
    """--gloo-shared-memory auto|read|staged|off: how gloo ranks all on one host move bytes without sockets.
    read: each receiver reads its senders' source shards directly (cross-memory attach, refit_core/execution/
    transports/cma.py; where the kernel refuses that, staged); staged: through /dev/shm (shared.py); auto: read
    where the busiest receiver gets at least 4 MiB, else staged; off: every byte through gloo's loopback
    sockets."""
    megatron_unpatched: bool = False
    """--megatron-unpatched: run Megatron-Core's refit as shipped, without refit_core/peers/megatron_patch.py."""
    payload: str = "synthetic"
    """--payload: what is refit. synthetic (default): refitctl's deterministic values in its own shard
    buffers; megatron: Megatron-Core GPTModels of both layouts built on the ranks
    (refit_core/peers/megatron_build.py), their parameters refit through refit_core/library."""
    relay: str = "auto"
    """--relay auto|off: auto relays the cross-node slices several GPUs of a node share (in once per node, split
    over its NICs, then over NVLink; refit_core/planning/relay.py) where the method can forward and the time
    model predicts it faster; off: every byte goes straight from a source."""


@dataclass(frozen=True)
class Hardware:
    """What the run is given (its world of GPUs, their memory, GPUs per node) and the figures its prediction
    uses (refit_core/planning/timemodel.py); measured ceilings replace the link figures (`with_ceilings`)."""

    gpus: int = 8
    """--gpus: the world size, GPUs available to the run."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GiB as vendors quote it (H100: 80, H200: 141)."""
    gpus_per_node: int = 8
    """--gpus-per-node: GPUs of one node (the node map, the time model, SLURM's default tasks per node)."""
    intra_node_gbps: float = NVLINK_GBPS
    """Intra-node (NVLink) bandwidth per GPU per direction, GB/s (bytes, not bits)."""
    inter_node_gbps: float = NETWORK_GBPS
    """Inter-node (network adapter) bandwidth per GPU per direction, GB/s (bytes, not bits)."""
    intra_node_both_gbps: float | None = None
    """Intra-node GB/s each way while both ways are busy (None: the one-way figure)."""
    local_copy_gbps: float = LOCAL_COPY_GBPS
    """Device-to-device copy on one GPU, GB/s delivered."""
    link_source: str = ""
    """Where the link figures come from (a ceilings file, flags); empty: the defaults."""
    quantise_gbps: float = QUANTISE_GBPS
    """FP8 senders: the fused quantiser's quantise pass, GB/s of BF16 read (time model only)."""
    amax_gbps: float = AMAX_GBPS
    """FP8 senders: the scale pass (block maxima), GB/s of BF16 read (time model only)."""


SECTIONS: dict[str, type] = {"layouts": Layouts, "run": RunSettings, "hardware": Hardware}
"""RunConfig's section fields, by name, and the class of each."""
SECTION: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
"""Each setting's flat name -> the section that holds it: the one table every flat spelling goes through
(`RunConfig.of`, `with_changes`, `with_environment`, the flags, a flat config.json)."""


def default(setting: str) -> Any:
    """The default of a flat setting (`default("staged_zero_copy")` is True)."""
    return next(f.default for f in dataclasses.fields(SECTIONS[SECTION[setting]]) if f.name == setting)


def route(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split flat settings into (the keys that are not a section's, {section: {setting: value}})."""
    rest: dict[str, Any] = {}
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        if key in SECTION:
            by_section.setdefault(SECTION[key], {})[key] = value
        else:
            rest[key] = value
    return rest, by_section


def section_json(section: Any) -> dict[str, Any]:
    """A section as plain JSON: layouts as their fields, the mode as its value."""
    d = dataclasses.asdict(section)
    if isinstance(section, Layouts):
        d["mode"] = section.mode.value
    return d


def section_from_json(name: str, d: Mapping[str, Any]) -> Any:
    """The section `name` from `section_json`'s form (keys it does not know are ignored, as a newer writer's)."""
    cls = SECTIONS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known}
    if cls is Layouts:
        kwargs["source"] = ParallelLayout(**kwargs["source"])
        kwargs["destination"] = ParallelLayout(**kwargs["destination"])
        if "mode" in kwargs:
            kwargs["mode"] = RefitMode(kwargs["mode"])
    if isinstance(kwargs.get("gloo_shared_memory"), bool):  # written when it was on|off (2026-12-05)
        kwargs["gloo_shared_memory"] = "auto" if kwargs["gloo_shared_memory"] else "off"
    return cls(**kwargs)
