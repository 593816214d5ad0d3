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

FP8 destinations add the sender's quantisation (refit_core/execution/fp8_source.py), two passes
over BF16 on each source GPU, each with its own measured ceiling in GB/s of BF16 read
(benchmarks/gpu_bench.py: `quantise_amax`, `quantise`):

- the scale pass reads every quantised weight row the GPU holds (`amax_read`), before any byte moves;
- the quantise pass reads each quantised element the GPU sends or copies (`quantise_read`, 2 bytes
  an element) and writes its FP8 byte. Two-sided transports (nccl, gloo) quantise a bucket while the
  previous one is on the wire and local copies while the link runs (`quantise_overlaps`); one-sided
  ones (nvshmem) write a whole send image of what the GPU holds first.

So a source GPU takes: scales + max(links, quantise) when overlapped, scales + quantise + links
otherwise; its lower bound counts "quantise" as one more class (scales + quantise pass, on HBM).
Until a GPU measures them the defaults assume both passes run at HBM speed: the default local copy
figure (1500 GB/s delivered = 3000 GB/s of HBM traffic) gives 3000 GB/s of BF16 read for the scale
pass (2 bytes moved per 2 read) and 2000 for the quantise pass (3 bytes moved per 2 read). NOT YET
MEASURED: docs/kimi-k2.md.

Both ignore latency, bucket synchronisation and congestion inside the network; they say what the
links allow, and measured times are to be compared against them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refit_core.planning.plan import Plan
from refit_core.planning.precision import destination_inventory
from refit_core.planning.sharding import shard_groups

GB = 10**9

# Defaults, per GPU and per direction (see docs/kimi-k2.md for the sources):
# NVLink 4 on H100/H200 SXM: 900 GB/s total = 450 GB/s each way.
NVLINK_GBPS = 450.0
# One 400 Gb/s InfiniBand NDR / RoCE adapter per GPU (DGX H100/H200: 8 per node) = 50 GB/s each way.
NETWORK_GBPS = 50.0
# Device-to-device copy: HBM3 3.35 TB/s (H100 SXM), each byte read once and written once.
LOCAL_COPY_GBPS = 1500.0
# FP8 quantisation, GB/s of BF16 read (assumed at HBM speed until measured, see the module docstring).
AMAX_GBPS = 2 * LOCAL_COPY_GBPS
QUANTISE_GBPS = 2 * LOCAL_COPY_GBPS * 2 / 3
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
    quantise_gbps: float = QUANTISE_GBPS  # FP8 quantise pass, GB/s of BF16 read
    amax_gbps: float = AMAX_GBPS  # FP8 scale pass (block maxima), GB/s of BF16 read
    quantise_overlaps: bool = True  # the quantise pass overlaps the links (two-sided transports)

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
    amax_read: int = 0  # FP8: BF16 bytes of the quantised weight rows this GPU holds (scale pass)
    quantise_read: int = 0  # FP8: BF16 bytes of the quantised elements it sends or copies (quantise pass)

    def link_times(self, link: LinkModel) -> dict[str, float]:
        """Seconds each (class, direction) of this GPU needs on its own; FP8: "quantise", the scale
        pass and the quantise pass (both on this GPU's memory, one after the other)."""
        intra = link.intra_gbps(self.intra_in > 0 and self.intra_out > 0) * GB
        inter = link.inter_node_gbps * GB
        return {
            "intra-node in": self.intra_in / intra, "intra-node out": self.intra_out / intra,
            "inter-node in": self.inter_in / inter, "inter-node out": self.inter_out / inter,
            "local copy": self.local / (link.local_copy_gbps * GB),
            "quantise": self.scales_s(link) + self.quantise_s(link),
        }

    def scales_s(self, link: LinkModel) -> float:
        return self.amax_read / (link.amax_gbps * GB)

    def quantise_s(self, link: LinkModel) -> float:
        """The quantise pass: what is moved (overlapped transports), else the whole send image."""
        return (self.quantise_read if link.quantise_overlaps else self.amax_read) / (link.quantise_gbps * GB)

    def bound_s(self, link: LinkModel) -> float:
        return max(self.link_times(link).values())

    def serial_s(self, link: LinkModel) -> float:
        t = self.link_times(link)
        links = (max(t["intra-node in"], t["intra-node out"]) + max(t["inter-node in"], t["inter-node out"])
                 + t["local copy"])
        q = self.quantise_s(link)
        return self.scales_s(link) + (max(links, q) if link.quantise_overlaps else links + q)


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


def quantised_bytes(plan: Plan) -> tuple[dict[int, int], dict[int, int]]:
    """FP8: per source rank, BF16 bytes of the quantised weight rows it holds, and of the quantised
    elements it sends or copies (its transfers of FP8 weights: one byte an element on the wire)."""
    held: dict[int, int] = {}
    moved: dict[int, int] = {}
    if plan.destination is None:
        return held, moved
    weights = {wi for wi, _ in destination_inventory(plan.inventory, plan.precision).scales}
    for t in plan.transfers:
        if t.param in weights and not t.hop:  # a relay forwards FP8 bytes it received: it quantises nothing
            moved[t.src] = moved.get(t.src, 0) + 2 * plan.nbytes(t)
    src, spec = plan.world.source, plan.inventory.spec
    by_local: dict[int, int] = {}
    for wi in sorted(weights):
        p = plan.inventory.params[wi]
        row_bytes = p.numel // p.shape[p.split_dim] * 2
        for g in shard_groups(p, src.layout, spec.num_layers, spec.num_experts):
            n = sum(pc.length for pc in g.pieces) * row_bytes
            for local in g.holders:
                by_local[local] = by_local.get(local, 0) + n
    held = {r: by_local.get(src.local(r), 0) for r in src.ranks}
    return held, moved


def gpu_loads(plan: Plan, link: LinkModel) -> tuple[GpuLoad, ...]:
    """Per-GPU bytes split by link class, from the plan's (source, destination) byte totals; FP8:
    the BF16 bytes each source quantises."""
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
    held, moved = quantised_bytes(plan)
    return tuple(GpuLoad(r, *v, held.get(r, 0), moved.get(r, 0)) for r, v in acc.items())


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
