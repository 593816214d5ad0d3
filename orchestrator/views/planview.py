"""How a plan is shown to people: rich tables, and the `--json` object scripts read."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from refit_core.config import RunConfig
from refit_core.numbers import human_bytes
from refit_core.planning import methods
from refit_core.planning.placement import nvshmem_direction
from refit_core.planning.devices import DeviceMap
from refit_core.planning.layout import WorldLayout
from refit_core.planning.memory import MemoryFit
from refit_core.numbers import GIB
from refit_core.planning.plan import Plan
from refit_core.planning.timemodel import RelayChoice, TimePrediction, predict
from orchestrator.submission.prepared import device_map



def predicted_lines(pred: TimePrediction) -> list[str]:
    """The time model's verdict: time and bound, the link model, and load against the even share."""
    link, bal = pred.link, pred.balance
    return [
        f"Predicted refit time: {pred.time_s * 1e3:.3f} ms, lower bound {pred.bound_s * 1e3:.3f} ms "
        f"(bottleneck: GPU {pred.bottleneck_rank}, {pred.bottleneck_link})",
        f"Link model per GPU per direction: intra-node {link.intra_node_gbps:g} GB/s"
        + (f" ({link.intra_node_both_gbps:g} each way when both are busy)" if link.intra_node_both_gbps else "")
        + f", inter-node {link.inter_node_gbps:g} GB/s, local copy {link.local_copy_gbps:g} GB/s; "
        f"{link.gpus_per_node} GPUs/node",
        f"Link figures from: {escape(link.source)}",
        *quantise_lines(pred),
        f"Load vs even share: sources x{bal.out_ratio:.4f} (busiest {human_bytes(bal.max_out)} out), "
        f"destinations x{bal.in_ratio:.4f} (busiest {human_bytes(bal.max_in)} in)",
    ]


def quantise_lines(pred: TimePrediction) -> list[str]:
    """FP8: the quantiser's figures, how it overlaps, and what it costs the busiest source GPU."""
    link = pred.link
    busiest = max(pred.loads, key=lambda g: (g.scales_s(link) + g.quantise_s(link), -g.rank))
    if not busiest.amax_read:
        return []
    how = "overlapping the links (bucket by bucket)" if link.quantise_overlaps else "into a send image, before the links"
    return [f"FP8 quantiser: scale pass {link.amax_gbps:g} GB/s, quantise pass {link.quantise_gbps:g} GB/s of BF16 read, "
            f"{how}; busiest source GPU {busiest.rank}: scales {busiest.scales_s(link) * 1e3:.3f} ms + quantise "
            f"{busiest.quantise_s(link) * 1e3:.3f} ms"]


def precision_line(plan: Plan) -> str:
    """FP8 destination: what became FP8, the scales' share, and the blocks a source TP boundary cuts."""
    dinv = plan.destination or plan.inventory
    n = len(plan.inventory.params)
    fp8 = sum(1 for a, b in zip(dinv.params, plan.inventory.params) if a.dtype != b.dtype)
    scales = dinv.params[n:]
    gathered = sum(g.length for g in plan.gathers)
    return (f"Destination precision {plan.precision}: {fp8} weights in float8 e4m3 (128x128 blocks), "
            f"{len(scales)} scale tensors ({human_bytes(sum(p.nbytes for p in scales))}), model at the destination "
            f"{human_bytes(dinv.nbytes)}; {gathered} scale blocks cut by a source TP boundary (amax gathered)")


def balance_lines(plan: Plan, pred: TimePrediction) -> list[str]:
    """The plan's balance against the max-flow optimum: per link class when node-aware."""
    if not plan.class_bounds:
        return [f"Balance (node-blind): busiest source sends {human_bytes(plan.max_source_bytes)}, best possible "
                f"{human_bytes(plan.balance_bound)} (ratio {plan.balance:.4f})"]
    bounds = pred.class_bounds_s()
    lines = []
    for cls, name in (("intra-node", "NVLink"), ("inter-node", "NIC")):
        most, best = plan.class_balance[cls]
        ratio = most / best if best else 1.0
        lines.append(f"Balance {cls} ({name}, node-aware): busiest source sends {human_bytes(most)}, best possible "
                     f"{human_bytes(best)} (ratio {ratio:.4f}); busiest GPU's {name} {bounds[cls] * 1e3:.3f} ms")
    return lines


def relay_lines(cfg: RunConfig, choice: RelayChoice) -> list[str]:
    """Relays (planning/relay.py): what the relayed plan forwards, its NIC and NVLink bounds, and the predicted
    time with and without relays, with the one kept and why."""
    d = choice.direct
    if choice.relayed is None:
        why = ("--relay off" if cfg.run.relay == "off" else
               f"method {cfg.run.method} does not forward" if not methods.method(cfg.run.method).relays else "one node")
        return [f"Relays: none weighed ({why}); predicted without relays {d.time_s * 1e3:.3f} ms"]
    r = choice.relayed
    rb, db = r.class_bounds_s(), d.class_bounds_s()
    kept = "with relays" if choice.uses_relays else "without relays (not predicted faster)"
    return [f"Relays (--relay {cfg.run.relay}): {human_bytes(choice.relayed_bytes)} forwarded over NVLink (hop 1) by "
            f"{len({t.src for t in choice.plan.transfers if t.hop})} relays" if choice.uses_relays else
            f"Relays (--relay {cfg.run.relay}): the relayed plan would forward {human_bytes(choice.relayed_bytes)}",
            f"  with relays: NIC bound {rb['inter-node'] * 1e3:.3f} ms, NVLink bound {rb['intra-node'] * 1e3:.3f} ms, "
            f"predicted {r.time_s * 1e3:.3f} ms; without: NIC {db['inter-node'] * 1e3:.3f} ms, NVLink "
            f"{db['intra-node'] * 1e3:.3f} ms, predicted {d.time_s * 1e3:.3f} ms; kept: {kept}"]


def memory_lines(fit: MemoryFit) -> list[str | Text]:
    b = fit.busiest
    verdict = (Text(f"fits ({human_bytes(fit.headroom_bytes)} headroom)") if fit.fits
               else Text(f"does not fit ({human_bytes(-fit.headroom_bytes)} over)", style="red"))
    return [
        Text(f"Memory per GPU: at most {human_bytes(b.total)} of {fit.limit_bytes / GIB:g} GiB, ") + verdict,
        f"  busiest GPU {b.rank} ({b.role}): source shard {human_bytes(b.source_bytes)} + destination shard "
        f"{human_bytes(b.destination_bytes)} + refit buffers {human_bytes(b.buffer_bytes)}",
    ]


DETAIL_RANKS = 16
"""Worlds up to this many ranks print every rank (the seed's configs); larger ones (Kimi K2: 384 ranks, a GPU
line of 4,500 characters, a 384-row table) print the summary and say how to get the rest (`--detail`)."""


def gpus_summary(dmap: DeviceMap, w: WorldLayout) -> str:
    """The GPU placement in one short line: how many ranks on how many GPUs of how many nodes."""
    active = range(w.gpus_used)
    used = {(dmap.node(r), dmap.devices[r]) for r in active if dmap.devices[r] is not None}
    if not used:
        text = f"no GPU: {w.gpus_used} ranks run on the CPU"
    else:
        nodes = len({n for n, _ in used})
        text = f"{w.gpus_used} ranks on {len(used)} GPUs of {nodes} node{'s' if nodes > 1 else ''}"
    if len(w.idle_ranks):
        text += f", {len(w.idle_ranks)} idle (no GPU)"
    return text + " (each: --detail)"


def print_plan(console: Console, cfg: RunConfig, plan: Plan, gpus: DeviceMap | None = None,
               detail: bool | None = None, relay: RelayChoice | None = None) -> None:
    """The plan as text: the summary first (with `relay`, the plans with and without relays); each rank's GPU and
    bytes too when `detail` (default: for worlds of at most DETAIL_RANKS ranks)."""
    w = plan.world
    inv = plan.inventory
    detail = w.world_size <= DETAIL_RANKS if detail is None else detail
    console.print(w.describe())
    dmap = gpus or device_map(cfg, plan)
    where = (f" (as SLURM places them on nodes of {cfg.hardware.gpus_per_node}; --local-gpus N: a local run)"
             if gpus is None else "")
    console.print(f"GPUs{where}: {dmap.describe(w) if detail else gpus_summary(dmap, w)}", highlight=False,
                  soft_wrap=True)
    if dmap.note:
        console.print(f"note: {dmap.note}", highlight=False, soft_wrap=True)
    console.print(
        f"Model: {inv.numel:,} parameters in {len(inv.params)} tensors, {human_bytes(inv.nbytes)} "
        f"({inv.spec.dtype}; experts {human_bytes(inv.expert_nbytes)})"
    )
    console.print(
        f"Plan: {len(plan.transfers)} transfers, network {human_bytes(plan.network_bytes)}, "
        f"local {human_bytes(plan.local_bytes)}; method {cfg.run.method}, mode {w.mode.value}"
    )
    if plan.destination is not None:
        console.print(precision_line(plan))
    if methods.method(cfg.run.method).buffers == "nvshmem-heap":
        direction = nvshmem_direction(w, cfg.run.nvshmem_placement, cfg.hardware.gpus_per_node)
        console.print(f"NVSHMEM: placement {cfg.run.nvshmem_placement}"
                      + (f" (as {direction} here)" if direction != cfg.run.nvshmem_placement else "")
                      + f", completion {cfg.run.nvshmem_sync} (--nvshmem-placement, --nvshmem-sync)", highlight=False)
    fit = cfg.memory_fit(inv, w)
    pred = predict(plan, cfg.link_model())
    for line in (*balance_lines(plan, pred), *(relay_lines(cfg, relay) if relay is not None else ())):
        console.print(line, highlight=False)
    for line in (*memory_lines(fit), *predicted_lines(pred)):
        console.print(line)
    if not detail:
        console.print(f"(each rank's GPU and bytes, {w.world_size} rows: --detail; everything: --json)",
                      highlight=False)
        return
    print_rank_tables(console, plan, fit)


def print_rank_tables(console: Console, plan: Plan, fit: MemoryFit) -> None:
    """Each rank's bytes and memory, and the source -> destination byte matrix (small worlds only)."""
    w = plan.world
    t = Table(title="Per-rank bytes", show_lines=False)
    for col in ("rank", "role", "in (network)", "out (network)", "local copy", "memory"):
        t.add_column(col, justify="right" if col != "role" else "left")
    for (r, v), m in zip(plan.per_rank.items(), fit.per_rank):
        t.add_row(str(r), w.role(r), human_bytes(v.bytes_in), human_bytes(v.bytes_out), human_bytes(v.bytes_local),
                  human_bytes(m.total))
    console.print(t)
    srcs = list(w.source.ranks)
    dsts = list(w.destination.ranks)
    if len(srcs) <= 16 and len(dsts) <= 16:
        m = Table(title="Source -> destination bytes (local copies marked *)")
        m.add_column("src \\ dst", justify="right")
        for d in dsts:
            m.add_column(str(d), justify="right")
        for s in srcs:
            row = []
            for d in dsts:
                b = plan.pair_bytes.get((s, d), 0)
                row.append("" if not b else human_bytes(b) + ("*" if s == d else ""))
            m.add_row(str(s), *row)
        console.print(m)
    else:
        console.print(f"(byte matrix of {len(srcs)}x{len(dsts)} ranks omitted; use --json)")
