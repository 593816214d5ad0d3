"""A refit run, fully resolved: model, both layouts, mode, method, iterations.

`RunConfig` is what crosses every boundary (CLI -> orchestrator -> job), as a frozen value and
as plain JSON. `validate()` raises the one-line errors users see before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from typing import Any

from refit_core.errors import ConfigError
from refit_core.layout import MAX_WORLD, ParallelLayout, RefitMode, WorldLayout, world_layout
from refit_core.memory import GIB, MemoryFit, check_memory, memory_fit
from refit_core.model import MAX_PARAMETERS, Inventory, ModelSpec, inventory
from refit_core.sharding import check_divisible
from refit_core.timemodel import LOCAL_COPY_GBPS, NETWORK_GBPS, NVLINK_GBPS, LinkModel

METHODS = ("nccl", "nvshmem", "gloo", "naive", "megatron-gloo", "megatron-nccl", "megatron-nvshmem")
MAX_ITERATIONS = 1_000_000


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: ModelSpec
    source: ParallelLayout
    destination: ParallelLayout
    mode: RefitMode = RefitMode.NON_COLLOCATED
    method: str = "nvshmem"
    iterations: int = 3
    warmup: int = 1
    gpus: int = 8
    bucket_bytes: int = 1 << 30
    use_case: str = ""
    description: str = ""
    timeout_s: float = 60.0  # --refit-timeout: longest a rank waits on a peer before the run fails
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GiB as vendors quote it (H100: 80, H200: 141)."""
    gpus_per_node: int = 8
    intra_node_gbps: float = NVLINK_GBPS
    """Intra-node (NVLink) bandwidth per GPU per direction, GB/s (bytes, not bits)."""
    inter_node_gbps: float = NETWORK_GBPS
    """Inter-node (network adapter) bandwidth per GPU per direction, GB/s (bytes, not bits)."""

    def validate(self) -> None:
        """Raise ConfigError for anything the seed says cannot work, before submission.

        Scalars first (cheap, and they bound what follows: the world's size, the model's), then the
        layouts against the model, then memory."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown --refit-method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "megatron-nvshmem":  # Megatron-Core's peer (refit_core/transports/megatron.py)
            from refit_core.transports.megatron import NVSHMEM_REFUSAL
            raise ConfigError(NVSHMEM_REFUSAL)
        for flag, value, low, high in (("--num-benchmark-iterations", self.iterations, 1, MAX_ITERATIONS),
                                       ("--num-warmup-iterations", self.warmup, 0, MAX_ITERATIONS),
                                       ("--gpus", self.gpus, 1, MAX_WORLD),
                                       ("--gpus-per-node", self.gpus_per_node, 1, MAX_WORLD)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{flag} must be an integer {low}..{high:,}, got {value!r}")
        if not 1 <= self.timeout_s <= 86400:
            raise ConfigError(f"--refit-timeout must be 1..86400 seconds, got {self.timeout_s}")
        if not isinstance(self.bucket_bytes, int) or self.bucket_bytes < 1 << 20:
            raise ConfigError(f"--refit-bucket-size must be at least 1 MiB, got {self.bucket_bytes} bytes")
        if self.model.is_moe:
            if self.source.etp != 1 or self.destination.etp != 1:
                raise ConfigError(
                    "MoE needs --expert-tensor-parallel-size 1 and --rl-inference-expert-tensor-model-parallel-size 1 "
                    f"(got {self.source.etp} and {self.destination.etp}): set both to 1"
                )
            if not self.model.disable_bias_linear:
                raise ConfigError("MoE refit needs --disable-bias-linear (the seed's requirement): add the flag")
        if not self.gpu_memory_gb > 0:
            raise ConfigError(f"--gpu-memory-gb must be > 0, got {self.gpu_memory_gb}")
        for flag, value in (("--intra-node-gbps", self.intra_node_gbps), ("--inter-node-gbps", self.inter_node_gbps)):
            if not value > 0:
                raise ConfigError(f"{flag} must be > 0 (GB/s per GPU per direction), got {value}")
        world = self.world()
        inv = self.inventory()
        if inv.numel > MAX_PARAMETERS:
            raise ConfigError(f"the model has {inv.numel:.3g} parameters, more than {MAX_PARAMETERS:.0e} "
                              "(Kimi K2 has 1.03e12): check --hidden-size, --ffn-hidden-size and the vocabulary")
        check_divisible(self.model, inv, self.source, "source")
        check_divisible(self.model, inv, self.destination, "destination")
        check_memory(self.memory_fit(inv, world), self.gpu_memory_gb, self.method)

    def world(self) -> WorldLayout:
        return world_layout(self.mode, self.source, self.destination, self.gpus)

    def inventory(self) -> Inventory:
        return inventory(self.model, (self.source.tp, self.destination.tp))

    def memory_fit(self, inv: Inventory | None = None, world: WorldLayout | None = None) -> MemoryFit:
        """Per-GPU bytes of this refit (shards + the transport's buffers) against --gpu-memory-gb."""
        return memory_fit(inv or self.inventory(), world or self.world(), self.method, self.bucket_bytes,
                          int(self.gpu_memory_gb * GIB), self.gpus_per_node)

    def link_model(self) -> LinkModel:
        return LinkModel(self.gpus_per_node, self.intra_node_gbps, self.inter_node_gbps, LOCAL_COPY_GBPS)

    def with_changes(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mode"] = self.mode.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["model"] = ModelSpec(**d["model"])
        d["source"] = ParallelLayout(**d["source"])
        d["destination"] = ParallelLayout(**d["destination"])
        d["mode"] = RefitMode(d["mode"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def plain_text(flag: str, text: object, spaces: bool = True) -> str:
    """`text` if it is a string that a script line can hold: no control characters (and no spaces if asked)."""
    if not isinstance(text, str):
        raise ConfigError(f"{flag} must be text, got {text!r}")
    bad = next((c for c in text if unicodedata.category(c).startswith("C") or (not spaces and c.isspace())), None)
    if bad is not None:
        what = "a space" if bad.isspace() and bad not in "\n\r\t" else f"the control character {bad!r}"
        raise ConfigError(f"{flag} {text!r} contains {what}: remove it")
    return text
