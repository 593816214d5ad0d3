"""refitctl against Megatron-Core's own refit, side by side: every seed row, same model, same world.

    python benchmarks/megatron_peer.py                       # CPU: gloo vs megatron-gloo, reduced model
    python benchmarks/megatron_peer.py --backend nccl        # GPUs: nccl vs megatron-nccl, seed model,
                                                             # one rank per GPU, rows needing more skipped

Per seed row (configs 1-6, collocated-1..4) refitctl's method runs, then Megatron-Core's
(`megatron-<backend>`, refit_core/peers/megatron_transport.py), one after the other, each as one local
process per rank (jobs/local.py, world = the GPUs the row uses), with the same warm-up and timed
iterations and the same bitwise verification (refit_core/execution/engine.py). Written to
benchmarks/results/<date>-cpu-megatron.json (or <date>-<gpu>-<N>gpu-megatron.json): per row both
methods' bytes, first refit (`first_ms`: the warm-up iteration; Megatron's plan is built inside
it) and steady state (`median_ms`), refitctl's planning outside the iteration (`plan_ms`, measured
here in-process: plan_transfers + the busiest rank's blocks), `speedup` = peer median / refitctl
median, and `first_speedup` = peer first / (refitctl plan + first). A table is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.local import run_locally  # noqa: E402
from orchestrator.configs import SWEEPS, resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402

# The reduced model for CPU (2 cores shared): tests/conftest.py SMALL_FLAGS with hidden 512 and
# FFN 1024 (x4 the bytes), so one refit takes tens to hundreds of ms instead of a few.
REDUCED = {"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8, "ffn_hidden_size": 1024,
           "num_experts": 8, "moe_shared_expert_intermediate_size": 512, "seq_length": 128,
           "max_position_embeddings": 128, "vocab_size": 1000}


def row_config(name: str, method: str, size: str, iterations: int, warmup: int) -> RunConfig:
    cfg = resolve(name)
    flags: dict[str, Any] = {"refit_method": method, "num_benchmark_iterations": iterations,
                             "num_warmup_iterations": warmup}
    if size == "reduced":
        flags.update(REDUCED)
    cfg = apply_overrides(cfg, flags)
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)  # one rank per GPU the row uses, no idle ranks
    cfg.validate()
    return cfg


def refitctl_traffic(cfg: RunConfig) -> dict[str, int]:
    """What refitctl's plan moves: network and local bytes, the busiest rank's network bytes in and
    out, and its messages (one per peer pair and round, jobs' staged transport)."""
    from refit_core.planning.plan import plan_transfers

    plan = plan_transfers(cfg.inventory(), cfg.world())
    pr = plan.per_rank.values()
    pairs = {(t.src, t.dst) for t in plan.transfers if t.src != t.dst}
    return {"network_bytes": plan.network_bytes, "local_bytes": plan.local_bytes,
            "busiest_in_bytes": max(v.bytes_in for v in pr), "busiest_out_bytes": max(v.bytes_out for v in pr),
            "messages": len(pairs), "busiest_messages_in": max((sum(1 for s, d in pairs if d == r)
                                                                for r in range(cfg.gpus)), default=0)}


def refitctl_plan_ms(cfg: RunConfig) -> float:
    """refitctl's planning, which runs before its first iteration (Megatron's runs inside it)."""
    from refit_core.planning.blocks import chunk_bytes_for, rank_blocks
    from refit_core.planning.plan import plan_transfers
    from refit_core.planning.storage import rank_storage

    t0 = time.perf_counter()
    plan = plan_transfers(cfg.inventory(), cfg.world())
    t_plan = time.perf_counter() - t0
    world, inv = plan.world, plan.inventory
    chunk = chunk_bytes_for(plan, cfg.bucket_bytes)
    slowest = 0.0
    for r in range(world.gpus_used):
        t = time.perf_counter()
        sl, dl = world.source.local(r), world.destination.local(r)
        rank_blocks(plan, plan.for_rank(r),
                    rank_storage(inv, world.source.layout, sl) if sl is not None else None,
                    rank_storage(inv, world.destination.layout, dl) if dl is not None else None, chunk)
        slowest = max(slowest, time.perf_counter() - t)
    return (t_plan + slowest) * 1e3


def run_one(cfg: RunConfig, workdir: Path) -> dict[str, Any]:
    run_dir = workdir / f"{cfg.name}-{cfg.method}{'-unpatched' if cfg.megatron_unpatched else ''}"
    t0 = time.monotonic()
    codes, res = run_locally(cfg, run_dir, timeout_s=1200)
    res = res or {}
    out: dict[str, Any] = {"method": cfg.method, "bytes": res.get("delivered_bytes"), "first_ms": res.get("first_ms"),
                           "median_ms": res.get("median_ms"), "min_ms": res.get("min_ms"),
                           "timed_ms": [i["time_ms"] for i in res.get("iterations", []) if not i["warmup"]],
                           "phases_first_ms": (res.get("iterations") or [{}])[0].get("phases_ms"),
                           "verified": bool(res.get("verified")), "wall_s": round(time.monotonic() - t0, 1)}
    if res.get("transport", {}).get("peer"):
        out["transport"] = res["transport"]
    if any(codes) or res.get("errors"):
        out["error"] = _first_error(run_dir, res)
    return out


def _first_error(run_dir: Path, res: dict[str, Any]) -> str:
    for text in (res.get("errors") or {}).values():
        return str(text).splitlines()[0][:400]
    for log in sorted((run_dir / "logs").glob("rank-*.log")):
        lines = [ln for ln in log.read_text().splitlines() if "Error" in ln]
        if lines:
            return f"{log.name}: {lines[-1][:400]}"
    return "no results.json and no error line in the logs"


def _short(lay: Any) -> str:
    return f"TP{lay.tp}/EP{lay.ep}" + (f"/PP{lay.pp}" if lay.pp > 1 else "")


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def _device(backend: str, gpus: int) -> tuple[str, str]:
    """(device description, file tag)."""
    if backend == "gloo":
        return f"cpu: {os.cpu_count()} cores ({os.uname().nodename}), gloo between local processes", "cpu"
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
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--also-unpatched", action="store_true", help="also run Megatron-Core as shipped (no patch)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<date>-<device>-megatron.json)")
    ap.add_argument("--rescore", type=Path, help="add the derived fields (min speedup, refitctl's traffic) to a "
                    "JSON this script wrote, print its table, run nothing")
    args = ap.parse_args(argv)
    if args.rescore:
        return rescore(args.rescore)
    size = args.size or ("reduced" if args.backend == "gloo" else "seed")
    gpus = args.gpus
    if args.backend == "nccl" and gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    device, tag = _device(args.backend, gpus or 0)
    out = args.out or ROOT / "benchmarks" / "results" / f"{datetime.date.today().isoformat()}-{tag}-megatron.json"
    from refit_core.peers.megatron_build import megatron_core

    mc = megatron_core()
    if mc is None:
        print("megatron-core is not installed: pip install 'refitctl[megatron]'", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {
        "device": device, "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "megatron_core": getattr(mc, "__version__", None) or _meta_version(), "backend": args.backend, "size": size,
        "model_flags": REDUCED if size == "reduced" else "the seed's (orchestrator/configs/__init__.py)",
        "iterations": args.iterations, "warmup": args.warmup, "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_before": os.getloadavg(), "rows": [], "skipped": [],
    }
    peer_method = f"megatron-{args.backend}"
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            mine = row_config(name, args.backend, size, args.iterations, args.warmup)
            if gpus is not None and mine.gpus > gpus:
                doc["skipped"].append(f"{name}: needs {mine.gpus} GPUs, {gpus} here")
                print(f"skip {name}: needs {mine.gpus} GPUs", flush=True)
                continue
            peer = row_config(name, peer_method, size, args.iterations, args.warmup)
            a = run_one(mine, Path(tmp))
            a["plan_ms"] = round(refitctl_plan_ms(mine), 3)
            b = run_one(peer, Path(tmp))
            row = {"config": name, "mode": mine.mode.value, "layouts": f"{_short(mine.source)} -> {_short(mine.destination)}", "world": mine.gpus, "method": args.backend,
                   "peer_method": peer_method, "bytes": a["bytes"], "peer_bytes": b["bytes"],
                   "first_ms": a["first_ms"], "plan_ms": a["plan_ms"], "median_ms": a["median_ms"],
                   "peer_first_ms": b["first_ms"], "peer_median_ms": b["median_ms"],
                   "speedup": _ratio(b["median_ms"], a["median_ms"]), "min_speedup": _ratio(b["min_ms"], a["min_ms"]),
                   "first_speedup": _ratio(b["first_ms"], (a["first_ms"] or 0) + a["plan_ms"] if a["first_ms"] else None),
                   "verified": a["verified"], "peer_verified": b["verified"],
                   "peer_patched": (b.get("transport") or {}).get("patched"),
                   "traffic": refitctl_traffic(mine), "peer_traffic": (b.get("transport") or {}).get("plan_traffic"),
                   "refitctl": a, "peer": b,
                   "load": os.getloadavg()}
            if args.also_unpatched:
                u = run_one(peer.with_changes(megatron_unpatched=True), Path(tmp))
                row["peer_unpatched"] = {k: u.get(k) for k in ("verified", "median_ms", "error")}
            doc["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("refitctl", "peer")}), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=1))  # after every row: a stopped run keeps what it measured
    doc["load_after"] = os.getloadavg()
    out.write_text(json.dumps(doc, indent=1))
    print(table(doc))
    print(f"written: {out}")
    return 0 if all(r["verified"] and r["peer_verified"] for r in doc["rows"]) else 1


def rescore(path: Path) -> int:
    """Fields computed from what a run stored (for files written before they existed)."""
    doc = json.loads(path.read_text())
    for r in doc["rows"]:
        r["min_speedup"] = _ratio(r["peer"]["min_ms"], r["refitctl"]["min_ms"])
        r["peer_traffic"] = (r["peer"].get("transport") or {}).get("plan_traffic")
        if "traffic" not in r:
            r["traffic"] = refitctl_traffic(row_config(r["config"], r["method"], doc["size"], doc["iterations"],
                                                       doc["warmup"]))
    path.write_text(json.dumps(doc, indent=1))
    print(table(doc))
    return 0


def table(doc: dict[str, Any]) -> str:
    f = lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"{'config':13} {'layouts':26} {'MiB':>7} {'refitctl first':>14} {'median':>8} "
             f"{'Megatron first':>14} {'median':>8} {'speedup':>7} {'min x':>6} {'first x':>7} verified"]
    for r in doc["rows"]:
        mib = r["bytes"] / 2**20 if r["bytes"] else None
        ok = f"{'yes' if r['verified'] else 'NO'}/{'yes' if r['peer_verified'] else 'NO'}" + \
             (" (patched)" if r.get("peer_patched") else "")
        lines.append(f"{r['config']:13} {r['layouts']:26} {f(mib):>7} {f((r['first_ms'] or 0) + r['plan_ms']):>14} "
                     f"{f(r['median_ms']):>8} {f(r['peer_first_ms']):>14} {f(r['peer_median_ms']):>8} "
                     f"{f(r['speedup']):>7} {f(r.get('min_speedup')):>6} {f(r['first_speedup']):>7} {ok}")
    lines.append("first: refitctl's plan + first refit; Megatron's first refit (its plan is built inside it). "
                 "speedup = Megatron median / refitctl median; min x: the same for the fastest iteration")
    return "\n".join(lines)


def _meta_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
