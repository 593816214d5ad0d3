"""How long a plan should take: per-GPU bytes on each link class, divided by that link's bandwidth.

Ranks are packed onto nodes in order (node = rank // gpus_per_node). Every GPU has three link
classes, each full duplex with its own bandwidth per direction: intra-node (NVLink), inter-node
(its network adapter) and local copies (device memory, collocated mode only). For each GPU the
plan gives bytes in and out on each class (`GpuLoad`).

- Lower bound: every class and direction of every GPU runs at full bandwidth at once, so the refit
  cannot end before the most loaded (GPU, class, direction) drains:
  bound = max over GPUs, classes, directions of bytes / bandwidth.
- A link used both ways at once may give each direction less than one way alone (measured on
  2 x H200: NCCL 372 GB/s one way, 365 each way at once; peer copy 396 and 356): a GPU whose
  intra-node link carries bytes in and out uses `intra_node_both_gbps` for both, when known.
- Predicted: on one GPU the classes do not overlap (a transport stages each bucket through one set
  of buffers), but each class is full duplex:
  predicted = max over GPUs of sum over classes of max(bytes in, bytes out) / bandwidth.
  When all of a GPU's traffic uses one class the two coincide.

Both ignore latency, bucket synchronisation and congestion inside the network; they say what the
links allow, and measured times are to be compared against them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refit_core.planning.plan import Plan

GB = 10**9

# Defaults, per GPU and per direction (see docs/kimi-k2.md for the sources):
# NVLink 4 on H100/H200 SXM: 900 GB/s total = 450 GB/s each way.
NVLINK_GBPS = 450.0
# One 400 Gb/s InfiniBand NDR / RoCE adapter per GPU (DGX H100/H200: 8 per node) = 50 GB/s each way.
NETWORK_GBPS = 50.0
# Device-to-device copy: HBM3 3.35 TB/s (H100 SXM), each byte read once and written once.
LOCAL_COPY_GBPS = 1500.0
DEFAULT_SOURCE = "defaults (datasheets: NVLink 4, one 400 Gb/s NIC per GPU, HBM3)"


@dataclass(frozen=True)
class LinkModel:
    """Bandwidths in GB/s (10^9 bytes per second) per GPU per direction."""

    gpus_per_node: int = 8
    intra_node_gbps: float = NVLINK_GBPS
    inter_node_gbps: float = NETWORK_GBPS
    local_copy_gbps: float = LOCAL_COPY_GBPS
    intra_node_both_gbps: float | None = None  # each way, both ways busy; None: as one way
    source: str = DEFAULT_SOURCE  # where the figures come from (defaults, flags, a ceilings file)

    def intra_gbps(self, both_ways: bool) -> float:
        return self.intra_node_both_gbps if both_ways and self.intra_node_both_gbps else self.intra_node_gbps

    def node(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuLoad:
    """Bytes one GPU moves on each link class."""

    rank: int
    intra_in: int = 0
    intra_out: int = 0
    inter_in: int = 0
    inter_out: int = 0
    local: int = 0

    def link_times(self, link: LinkModel) -> dict[str, float]:
        """Seconds each (class, direction) of this GPU needs on its own."""
        intra = link.intra_gbps(self.intra_in > 0 and self.intra_out > 0) * GB
        inter = link.inter_node_gbps * GB
        return {
            "intra-node in": self.intra_in / intra, "intra-node out": self.intra_out / intra,
            "inter-node in": self.inter_in / inter, "inter-node out": self.inter_out / inter,
            "local copy": self.local / (link.local_copy_gbps * GB),
        }

    def bound_s(self, link: LinkModel) -> float:
        return max(self.link_times(link).values())

    def serial_s(self, link: LinkModel) -> float:
        t = self.link_times(link)
        return (max(t["intra-node in"], t["intra-node out"]) + max(t["inter-node in"], t["inter-node out"])
                + t["local copy"])


@dataclass(frozen=True)
class Balance:
    """Busiest GPU against the even share over its side's ranks (network bytes; 1.0 = perfectly even).

    `out` is over the source ranks, `in` over the destination ranks. A destination's bytes in are
    fixed by its shard; a source's bytes out are what the planner balances.
    """

    max_out: int
    mean_out: float
    max_in: int
    mean_in: float

    @property
    def out_ratio(self) -> float:
        return self.max_out / self.mean_out if self.mean_out else 1.0

    @property
    def in_ratio(self) -> float:
        return self.max_in / self.mean_in if self.mean_in else 1.0


@dataclass(frozen=True)
class TimePrediction:
    link: LinkModel
    loads: tuple[GpuLoad, ...]
    time_s: float
    bound_s: float
    bottleneck_rank: int
    bottleneck_link: str
    balance: Balance

    def class_bounds_s(self) -> dict[str, float]:
        """Per link class (intra-node: NVLink, inter-node: the NIC), the seconds its busiest GPU
        needs on it, either direction: the bound counted link class by link class."""
        out = {"intra-node": 0.0, "inter-node": 0.0}
        for g in self.loads:
            t = g.link_times(self.link)
            for c in out:
                out[c] = max(out[c], t[f"{c} in"], t[f"{c} out"])
        return out

    def to_json(self) -> dict[str, Any]:
        b = self.balance
        return {
            "time_s": self.time_s, "bound_s": self.bound_s, "class_bounds_s": self.class_bounds_s(),
            "bottleneck": {"rank": self.bottleneck_rank, "link": self.bottleneck_link},
            "model": self.link.to_json(),
            "balance": {"max_out_bytes": b.max_out, "mean_out_bytes": b.mean_out, "out_ratio": b.out_ratio,
                        "max_in_bytes": b.max_in, "mean_in_bytes": b.mean_in, "in_ratio": b.in_ratio},
        }


def gpu_loads(plan: Plan, link: LinkModel) -> tuple[GpuLoad, ...]:
    """Per-GPU bytes split by link class, from the plan's (source, destination) byte totals."""
    acc = {r: [0, 0, 0, 0, 0] for r in range(plan.world.world_size)}
    for (s, d), b in plan.pair_bytes.items():
        if s == d:
            acc[d][4] += b
        elif link.node(s) == link.node(d):
            acc[d][0] += b
            acc[s][1] += b
        else:
            acc[d][2] += b
            acc[s][3] += b
    return tuple(GpuLoad(r, *v) for r, v in acc.items())


def predict(plan: Plan, link: LinkModel | None = None) -> TimePrediction:
    """Predicted refit time and its lower bound for `plan` under `link`."""
    link = link or LinkModel()
    loads = gpu_loads(plan, link)
    busiest = max(loads, key=lambda g: (g.serial_s(link), -g.rank))
    tight = max(loads, key=lambda g: (g.bound_s(link), -g.rank))
    times = tight.link_times(link)
    senders = [loads[r].intra_out + loads[r].inter_out for r in plan.world.source.ranks]
    receivers = [loads[r].intra_in + loads[r].inter_in for r in plan.world.destination.ranks]
    balance = Balance(
        max_out=max(senders, default=0), mean_out=sum(senders) / len(senders) if senders else 0.0,
        max_in=max(receivers, default=0), mean_in=sum(receivers) / len(receivers) if receivers else 0.0,
    )
    return TimePrediction(
        link=link, loads=loads, time_s=busiest.serial_s(link), bound_s=tight.bound_s(link),
        bottleneck_rank=tight.rank, bottleneck_link=max(times, key=times.__getitem__), balance=balance,
    )


@dataclass(frozen=True)
class RelayChoice:
    """A plan kept among the one without relays and the one with them (planning/relay.py), with both
    predictions, so that a user sees what relays gain or cost."""

    plan: Plan
    direct: TimePrediction
    """The plan without relays."""
    relayed: TimePrediction | None
    """The plan with relays; None where none was weighed (--relay off, a method that cannot forward, one node)."""
    relayed_bytes: int = 0
    """Bytes the relayed plan forwards over NVLink (hop 1), kept or not."""

    @property
    def uses_relays(self) -> bool:
        return self.plan.relayed_bytes > 0


def choose_relay(direct: Plan, relayed: Plan | None, link: LinkModel) -> RelayChoice:
    """The relayed plan where it forwards anything and is predicted faster than `direct` (the serial
    prediction: a relay forwards only after its receive, so the NVLink hop follows the NIC hop), else `direct`."""
    d = predict(direct, link)
    if relayed is None:
        return RelayChoice(direct, d, None)
    r = predict(relayed, link)
    keep = relayed if relayed.relayed_bytes and r.time_s < d.time_s else direct
    return RelayChoice(keep, d, r, relayed.relayed_bytes)
