"""refitctl against Megatron-Core's own refit, interleaved on the same models in the same processes.

    python benchmarks/megatron_peer.py                       # CPU: gloo vs megatron-gloo, reduced model
    python benchmarks/megatron_peer.py --backend nccl        # GPUs: nccl vs megatron-nccl, seed model,
                                                             # one rank per GPU, rows needing more skipped

Per seed row (configs 1-6, collocated-1..4) one process per rank the row uses (gloo between
forked processes, refit_core/library/local.py) builds the row's two Megatron-Core GPTModels once
(refit_core/peers/megatron_build.py) and refits them with both, alternately:

- A: `refit_core.megatron.swap_model_weights(src, dst, backend, verify=False)`, refitctl's drop-in
  (its first call plans and binds the models' parameters: refitctl's first refit, plan included);
- B: `megatron.core.resharding.swap_model_weights(src, dst, service)` (patched:
  refit_core/peers/megatron_patch.py; its first call builds Megatron's plan).

First calls A then B, then `--rounds` rounds of A, B. Each call is timed between two barriers (the
slowest rank's time) after the destination was poisoned (NaN), and checked after the clock against
refitctl's expected values bitwise on every rank (mb.destination_mismatches). Both act on the SAME
parameters. Per row: the per-round speedups B/A, their median (`speedup`) and spread, and the first
calls' ratio (`first_speedup`). The machine's load hits A and B alike: that is what interleaving is
for. Written to benchmarks/results/<date>-cpu-megatron.json (or <date>-<gpu>-<N>gpu-megatron.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.configs import SWEEPS, resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402

# The reduced model for CPU (2 cores shared): tests/conftest.py SMALL_FLAGS with hidden 512 and
# FFN 1024 (x4 the bytes), so one refit takes tens to hundreds of ms instead of a few.
REDUCED = {"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8, "ffn_hidden_size": 1024,
           "num_experts": 8, "moe_shared_expert_intermediate_size": 512, "seq_length": 128,
           "max_position_embeddings": 128, "vocab_size": 1000}


def row_config(name: str, method: str, size: str) -> RunConfig:
    cfg = resolve(name)
    flags: dict[str, Any] = {"refit_method": method, "payload": "megatron"}
    if size == "reduced":
        flags.update(REDUCED)
    cfg = apply_overrides(cfg, flags)
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)  # one rank per GPU the row uses, no idle ranks
    cfg.validate(gpu_memory=False)
    return cfg


def refitctl_traffic(cfg: RunConfig) -> dict[str, int]:
    """What refitctl's plan moves: network and local bytes, the busiest rank's network bytes in and
    out, and the peer pairs that exchange messages."""
    plan = cfg.plan()
    pr = plan.per_rank.values()
    pairs = {(t.src, t.dst) for t in plan.transfers if t.src != t.dst}
    return {"network_bytes": plan.network_bytes, "local_bytes": plan.local_bytes,
            "delivered_bytes": plan.delivered_bytes,
            "busiest_in_bytes": max(v.bytes_in for v in pr), "busiest_out_bytes": max(v.bytes_out for v in pr),
            "messages": len(pairs), "busiest_messages_in": max((sum(1 for s, d in pairs if d == r)
                                                                for r in range(cfg.hardware.gpus)), default=0)}


# ---------------------------------------------------------------------------------------------
# one rank of one row (runs in the forked processes)
# ---------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], cuda: bool) -> float:
    import torch
    import torch.distributed as dist

    dist.barrier()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    return (time.perf_counter() - t0) * 1e3


def floor_exchange(cfg: RunConfig, cuda: bool) -> Callable[[], None]:
    """The least any two-sided refit of this plan can do on this backend: each (source, destination)
    pair's network bytes as ONE message from a contiguous buffer, all in one batch, and each rank's
    local bytes as one copy. Buffers allocated and touched here, untimed."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    pairs = cfg.plan().pair_bytes
    sends = [(d, torch.ones(n, dtype=torch.uint8, device=dev)) for (s, d), n in pairs.items() if s == rank != d]
    recvs = [(s, torch.zeros(n, dtype=torch.uint8, device=dev)) for (s, d), n in pairs.items() if d == rank != s]
    n_local = pairs.get((rank, rank), 0)
    local = (torch.ones(n_local, dtype=torch.uint8, device=dev), torch.zeros(n_local, dtype=torch.uint8, device=dev))

    def run() -> None:
        ops = [dist.P2POp(dist.isend, b, d) for d, b in sends] + [dist.P2POp(dist.irecv, b, s) for s, b in recvs]
        works = dist.batch_isend_irecv(ops) if ops else []
        local[1].copy_(local[0])
        for w in works:
            w.wait()

    return run


def row_rank(cfg: RunConfig, rounds: int, calls: int, first_rounds: int, backend: str) -> dict[str, Any]:
    """Build the row's models once, then `first_rounds` x (A first, B first: both plan again each
    time), and `rounds` x (A, B, floor), `calls` calls of each per round; every A and B call checked."""
    from refit_core.peers.megatron_transport import plan_traffic
    from refit_core.megatron import swap_model_weights
    from refit_core.peers import megatron_build as mb
    from refit_core.peers import megatron_patch

    cuda = backend == "nccl"
    models = mb.build_models(cfg)
    for m in (models.source, models.destination):
        if m is not None and cuda:
            m.cuda()
    if models.source is not None:  # the training model's parameters as DDP keeps them (untimed set-up)
        mb.contiguous_like_ddp(models.source)
    patch = megatron_patch.patch_expert_metadata()
    service = mb.cpu_gloo_service() if not cuda else _nccl_service()
    mb.fill_source(cfg, models)
    src, dst = models.source_arg, models.destination_arg
    floor = floor_exchange(cfg, cuda)

    transfers: list[float] = []

    def refitctl() -> None:
        transfers.append(swap_model_weights(src, dst, backend, verify=False).time_ms)

    def phases() -> dict[str, float] | None:
        from refit_core import megatron as rm

        refit = getattr(models.destination_arg, "_refitctl_refit", None) or next(iter(rm._no_target.values()), None)
        return {**refit.build_phases_ms, "first_transfer": round(transfers[-1], 3)} if refit else None

    def megatron_first() -> None:
        err = mb.plan_or_error(models, cfg.model.num_experts)
        if err is not None:
            raise RuntimeError(f"Megatron-Core could not plan: {err}")
        mb.swap(models, service)

    def megatron() -> None:
        mb.swap(models, service)

    def checked(fn: Callable[[], Any]) -> tuple[float, bool]:
        mb.poison_destination(models)
        ms = _timed(fn, cuda)
        return ms, not mb.destination_mismatches(cfg, models)

    def round_of(fn: Callable[[], Any], check: bool) -> tuple[float, bool]:
        got = [checked(fn) if check else (_timed(fn, cuda), True) for _ in range(calls)]
        return statistics.median(t for t, _ in got), all(ok for _, ok in got)

    def forget() -> None:  # both refits plan again at their next call (refitctl: build again, binding in place)
        from refit_core import megatron as rm

        for refit in [getattr(models.destination_arg, "_refitctl_refit", None), *rm._no_target.values()]:
            if refit is not None:
                refit.close()
        models.destination_arg.__dict__.pop("_refitctl_refit", None)
        rm._no_target.clear()
        models.destination_arg.__dict__.pop("_cached_reshard_plan", None)

    out: dict[str, Any] = {"first": [], "peer_first": [], "a": [], "b": [], "f": []}
    for k in range(first_rounds):
        if k:
            forget()
        out["first"].append(checked(refitctl))
        out.setdefault("first_phases_ms", []).append(phases())
        out["peer_first"].append(checked(megatron_first))
    floor()  # gloo's first connections for the floor's pairs, untimed
    for _ in range(rounds):
        out["a"].append(round_of(refitctl, True))
        out["b"].append(round_of(megatron, True))
        out["f"].append(round_of(floor, False))
    t0 = time.perf_counter()  # one call with refitctl's own digest check, for its cost
    stats = swap_model_weights(src, dst, backend, verify=True)
    out["verify"] = ((time.perf_counter() - t0) * 1e3, stats.verify_ms, stats.time_ms)
    refit = getattr(models.destination_arg, "_refitctl_refit", None)
    from refit_core.megatron import _no_target

    refit = refit or next(iter(_no_target.values()), None)
    out["extra_bytes"] = refit.extra_bytes if refit is not None else None
    out["build_phases_ms"] = out["first_phases_ms"]
    out["in_place"] = [b.in_place for b in (refit.source, refit.destination) if b is not None] if refit else None
    out["peer_traffic"] = plan_traffic(models)
    out["patched"] = patch.patched
    return out


def _nccl_service() -> Any:
    from megatron.core.resharding.copy_services.nccl_copy_service import NCCLCopyService

    return NCCLCopyService()


# ---------------------------------------------------------------------------------------------
# the parent: rows, speedups, the JSON
# ---------------------------------------------------------------------------------------------
def summarize(name: str, cfg: RunConfig, backend: str, ranks: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """One row from every rank's results: rank 0's times (each taken between barriers), verification
    over all ranks."""
    r0 = ranks[0]
    a_ms = [round(t, 3) for t, _ in r0["a"]]
    b_ms = [round(t, 3) for t, _ in r0["b"]]
    f_ms = [round(t, 3) for t, _ in r0["f"]]
    speedups = [round(b / a, 3) for a, b in zip(a_ms, b_ms)]
    ok = lambda key: all(v for r in ranks for _, v in (r["first"] if key == "a" else r["peer_first"]) + r[key])  # noqa: E731
    firsts = [round(b / a, 3) for (a, _), (b, _) in zip(r0["first"], r0["peer_first"])]
    first, peer_first = statistics.median(t for t, _ in r0["first"]), statistics.median(t for t, _ in r0["peer_first"])
    return {"config": name, "mode": cfg.layouts.mode.value, "layouts": f"{_short(cfg.layouts.source)} -> {_short(cfg.layouts.destination)}",
            "world": cfg.hardware.gpus, "payload": "megatron", "method": backend, "peer_method": f"megatron-{backend}",
            "rounds": len(speedups), "speedups": speedups, "speedup": round(statistics.median(speedups), 3),
            "speedup_min": min(speedups), "speedup_max": max(speedups),
            "first_ms": round(first, 3), "peer_first_ms": round(peer_first, 3),
            "first_speedups": firsts, "first_speedup": round(statistics.median(firsts), 3),
            "cold_first_ms": round(r0["first"][0][0], 3), "cold_peer_first_ms": round(r0["peer_first"][0][0], 3),
            "cold_first_speedup": firsts[0],
            "times_ms": a_ms, "peer_times_ms": b_ms, "floor_times_ms": f_ms,
            "floor_median_ms": round(statistics.median(f_ms), 3),
            "over_floor": round(statistics.median(a / f for a, f in zip(a_ms, f_ms)), 3),
            "peer_over_floor": round(statistics.median(b / f for b, f in zip(b_ms, f_ms)), 3),
            "median_ms": round(statistics.median(a_ms), 3), "peer_median_ms": round(statistics.median(b_ms), 3),
            "verified": ok("a"), "peer_verified": ok("b"), "peer_patched": all(r["patched"] for r in ranks),
            "verify_call_ms": round(r0["verify"][0], 3), "verify_ms": round(r0["verify"][1], 3),
            "extra_bytes_max": max((r["extra_bytes"] or 0) for r in ranks),
            "build_phases_ms": r0["build_phases_ms"], "in_place": r0["in_place"],
            "traffic": refitctl_traffic(cfg), "peer_traffic": r0["peer_traffic"],
            "wall_s": round(wall_s, 1), "load": os.getloadavg()}


def _short(lay: Any) -> str:
    return f"TP{lay.tp}/EP{lay.ep}" + (f"/PP{lay.pp}" if lay.pp > 1 else "")


def _device(backend: str, gpus: int) -> tuple[str, str]:
    """(device description, file tag)."""
    if backend == "gloo":
        return f"cpu: {os.cpu_count()} cores ({os.uname().nodename}), gloo between forked processes", "cpu"
    import torch

    name = torch.cuda.get_device_name(0)
    tag = next((t for t in ("h200", "h100", "a100", "b200") if t in name.lower()), "gpu")
    return f"{gpus} x {name}, nccl, one rank per GPU", f"{tag}-{gpus}gpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument("--gpus", type=int, help="GPUs on this machine (nccl; default: all visible)")
    ap.add_argument("--size", choices=("reduced", "seed"), help="model: reduced (CPU default) or the seed's (GPU default)")
    ap.add_argument("--configs", default=",".join(SWEEPS["8gpu"]))
    ap.add_argument("--rounds", type=int, default=7, help="rounds of (refitctl, Megatron-Core, floor), at least 3")
    ap.add_argument("--calls", type=int, default=3, help="calls of each per round; a round's time is their median")
    ap.add_argument("--first-rounds", type=int, default=3, help="rounds of (refitctl's first call, Megatron's first "
                    "call), both planning again each round; the first round is cold (gloo's first connections)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<date>-<device>-megatron.json)")
    args = ap.parse_args(argv)
    if args.rounds < 3:
        ap.error("--rounds must be at least 3")
    size = args.size or ("reduced" if args.backend == "gloo" else "seed")
    gpus = args.gpus
    if args.backend == "nccl" and gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    device, tag = _device(args.backend, gpus or 0)
    out = args.out or ROOT / "benchmarks" / "results" / f"{datetime.date.today().isoformat()}-{tag}-megatron.json"
    from refit_core.peers import megatron_build as mb

    mc = mb.megatron_core()
    if mc is None:
        print("megatron-core is not installed: pip install 'refitctl[megatron]'", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {
        "device": device, "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "megatron_core": _meta_version() or getattr(mc, "__version__", None), "backend": args.backend, "size": size,
        "model_flags": REDUCED if size == "reduced" else "the seed's (orchestrator/configs/__init__.py)",
        "schedule": f"{args.first_rounds} rounds of (A first call, B first call; both plan again each round), then "
                    f"{args.rounds} rounds of ({args.calls} A, {args.calls} B, {args.calls} floor); a round's time: the "
                    "median of its calls; same processes, same models",
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "load_before": os.getloadavg(),
        "rows": [], "skipped": []}
    for name in args.configs.split(","):
        cfg = row_config(name, args.backend, size)
        if gpus is not None and cfg.hardware.gpus > gpus:
            doc["skipped"].append(f"{name}: needs {cfg.hardware.gpus} GPUs, {gpus} here")
            print(f"skip {name}: needs {cfg.hardware.gpus} GPUs", flush=True)
            continue
        t0 = time.monotonic()
        ranks = mb.run_ranks(cfg.hardware.gpus, row_rank, cfg, args.rounds, args.calls, args.first_rounds, args.backend, timeout_s=1200,
                             backend=args.backend)
        row = summarize(name, cfg, args.backend, ranks, time.monotonic() - t0)
        doc["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("config", "speedup", "speedup_min", "speedup_max", "first_speedup",
                                              "median_ms", "peer_median_ms", "floor_median_ms", "peer_over_floor",
                                              "first_ms", "peer_first_ms", "verified", "peer_verified")}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))  # after every row: a stopped run keeps what it measured
    doc["load_after"] = os.getloadavg()
    out.write_text(json.dumps(doc, indent=1))
    print(table(doc))
    print(f"written: {out}")
    return 0 if all(r["verified"] and r["peer_verified"] for r in doc["rows"]) else 1


def table(doc: dict[str, Any]) -> str:
    """The side-by-side table docs/benchmarks.md shows (markdown)."""
    f = lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = ["| row | layouts | MiB | refitctl first | median | Megatron first | median | speedup (median of "
             f"{doc['rows'][0]['rounds'] if doc['rows'] else '-'} rounds) | spread | first x | verified |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ok = f"{'yes' if r['verified'] else 'NO'}/{'yes' if r['peer_verified'] else 'NO'}"
        lines.append(f"| {r['config']} | {r['layouts']} | {f(r['traffic']['delivered_bytes'] / 2**20)} | "
                     f"{f(r['first_ms'])} | {f(r['median_ms'])} | {f(r['peer_first_ms'])} | {f(r['peer_median_ms'])} | "
                     f"{r['speedup']:.2f} | {r['speedup_min']:.2f}-{r['speedup_max']:.2f} | {r['first_speedup']:.2f} | {ok} |")
    return "\n".join(lines)


def _meta_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
