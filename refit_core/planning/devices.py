"""Which GPU each rank uses: one pure function of the world, the refit method and the nodes.

Decided before anything is launched (the CLI's pre-flight), written into the run's devices.json (with the
other launch decision, whether a rank without a GPU falls back to the CPU), and used by every task
(jobs/refit_job.py); `refitctl plan` and `submit` print it. Ranks sit on nodes in
blocks of `ranks_per_node` (SLURM's block distribution; a local run is one node holding every
rank), and a GPU is named by its index among the GPUs the node shows (CUDA_VISIBLE_DEVICES as
SLURM or the user set it).

Rules, from what the GPUs were seen to do (issue 13):
- idle ranks never use a GPU: they take no CUDA device and join no process group;
- `gloo` runs on the CPU: no rank uses a GPU;
- `nccl`: one active rank per GPU. NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), so
  a node with fewer GPUs than its active ranks is refused here, in one line;
- `nvshmem` and `naive` (NVSHMEM underneath): PEs may share GPUs, but evenly. Uneven PEs per GPU
  (2 on GPU 0, 1 on GPU 1) hang NVSHMEM's init, so the PEs of a node go round-robin over the
  largest GPU count that divides them (3 PEs on 2 GPUs: all 3 on GPU 0), and a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refit_core.errors import ConfigError
from refit_core.planning import methods
from refit_core.planning.layout import WorldLayout

# How each refit method may share a GPU among its active ranks: None = no GPU at all.


@dataclass(frozen=True)
class DeviceMap:
    """Each global rank's GPU (local index on its node), or None: no GPU."""

    devices: tuple[int | None, ...]
    ranks_per_node: int
    gpus_per_node: int
    note: str = ""
    fallback_without_gpu: bool = False
    """Where a rank finds no CUDA GPU, it runs the method's CPU fallback (its registry entry's `cpu_fallback`) on
    no device instead of failing. A launch decision, not a setting: made for a config's own method (no
    --refit-method) submitted to SLURM, whose nodes only the job sees (orchestrator/submission/runspec.py);
    locally the same fallback is decided before launch."""

    def device(self, rank: int) -> int | None:
        return self.devices[rank]

    def node(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def describe(self, world: WorldLayout) -> str:
        """One line: `GPU 0: ranks 0 2 (source)  GPU 1: rank 1 (destination)  idle: 3-7 (no GPU)`."""
        active = range(world.gpus_used)
        if all(self.devices[r] is None for r in active):
            text = f"no GPU: ranks {_ranks(list(active))} run on the CPU"
        else:
            nodes = {self.node(r) for r in active}
            by_gpu: dict[tuple[int, int], list[int]] = {}
            for r in active:
                by_gpu.setdefault((self.node(r), self.devices[r]), []).append(r)  # type: ignore[arg-type]
            parts = []
            for (node, gpu), ranks in sorted(by_gpu.items()):
                roles = sorted({world.role(r) for r in ranks}, key=lambda s: (s != "source", s))
                where = f"node {node} GPU {gpu}" if len(nodes) > 1 else f"GPU {gpu}"
                parts.append(f"{where}: rank{'s' if len(ranks) > 1 else ''} {_ranks(ranks)} ({', '.join(roles)})")
            text = "  ".join(parts)
        if len(world.idle_ranks):
            text += f"  idle: {_ranks(list(world.idle_ranks))} (no GPU)"
        return text

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"devices": list(self.devices), "ranks_per_node": self.ranks_per_node,
                                "gpus_per_node": self.gpus_per_node, "note": self.note}
        if self.fallback_without_gpu:  # only where it was decided: `refitctl plan --json` reads as before
            d["fallback_without_gpu"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DeviceMap":
        """The map `to_json` wrote (a run directory's devices.json); a malformed one raises ValueError."""
        devices = d["devices"]
        if not isinstance(devices, list) or not all(v is None or (isinstance(v, int) and v >= 0) for v in devices):
            raise ValueError("devices must be a list of GPU indices or null")
        fallback = d.get("fallback_without_gpu", False)
        if not isinstance(fallback, bool):
            raise ValueError("fallback_without_gpu must be true or false")
        return cls(tuple(devices), int(d["ranks_per_node"]), int(d["gpus_per_node"]), str(d.get("note", "")), fallback)


def _ranks(ranks: list[int]) -> str:
    """`0 2 4` for a few ranks, `3-7` for a run of more than two."""
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return " ".join(map(str, ranks))


def assign_devices(world: WorldLayout, method: str, ranks_per_node: int, gpus_per_node: int) -> DeviceMap:
    """Place the world's ranks on GPUs (module docstring); ConfigError when the method cannot run there.

    `ranks_per_node`: tasks on each node (a local run: the whole world); `gpus_per_node`: GPUs each
    node shows to its tasks."""
    m = methods.method(method)
    if ranks_per_node < 1:
        raise ConfigError(f"ranks per node must be at least 1, got {ranks_per_node}")
    devices: list[int | None] = [None] * world.world_size
    sharing = m.gpu_sharing
    if sharing is None:
        return DeviceMap(tuple(devices), ranks_per_node, gpus_per_node)
    notes = []
    by_node: dict[int, list[int]] = {}
    for r in range(world.world_size if m.all_ranks else world.gpus_used):
        by_node.setdefault(r // ranks_per_node, []).append(r)
    for node, ranks in sorted(by_node.items()):
        k, g = len(ranks), gpus_per_node
        where = f"node {node}" if len(by_node) > 1 else "the node"
        if g < 1:
            raise ConfigError(f"--refit-method {method} needs CUDA GPUs but {where} has none: "
                              "use --refit-method gloo on the CPU")
        if sharing == "exclusive":
            if k > g:
                raise ConfigError(
                    f"--refit-method {method} needs {k} GPUs on {where} (one per active rank: NCCL refuses two ranks "
                    f"on one GPU) but found {g}: run where {k} GPUs are available (SLURM: --gpus-per-node {k}), "
                    "shrink the layouts, or use --refit-method nvshmem (ranks share GPUs) or gloo (CPU)")
            used = k
        else:
            used = max(d for d in range(1, min(k, g) + 1) if k % d == 0)
            if used < min(k, g):
                notes.append(f"{k} NVSHMEM PEs on {used} of {g} GPUs{'' if len(by_node) == 1 else f' of node {node}'}: "
                             "uneven PEs per GPU hang NVSHMEM init")
        for j, r in enumerate(ranks):
            devices[r] = j % used
    return DeviceMap(tuple(devices), ranks_per_node, gpus_per_node, "; ".join(notes))


def shares_gpus(devices: tuple[int | None, ...], ranks: list[int], ranks_per_node: int) -> bool:
    """Whether two of `ranks` sit on one GPU of one node."""
    seen = {(r // ranks_per_node, devices[r]) for r in ranks if devices[r] is not None}
    return len(seen) < sum(devices[r] is not None for r in ranks)
