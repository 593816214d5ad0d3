"""Refit between the GPUs of one machine against the link ceilings measured in the same run.

    python benchmarks/gpu_bench.py            # every GPU this machine has (N = torch.cuda.device_count())
    python benchmarks/gpu_bench.py --quick    # smoke test (1 GPU is enough): seed sizes, few rows

1. Ceilings, at the sizes the refit rows move (the busiest GPU's bytes, rounded to powers of two):
   local device copy; the fused FP8 quantiser's scale pass and quantise pass (`quantise_amax`,
   `quantise`: GB/s of BF16 read, on a [size / 14336, 7168] weight, checked bitwise); with 2+ GPUs,
   peer copy GPU 0 -> 1 one way and both ways at once (one
   process), and NCCL send/recv one way and both ways (two processes, benchmarks/nccl_probe.py).
2. Refit rows through the local launcher (jobs/local.py: one process per rank, rank r on GPU
   r % N): every seed config with NVSHMEM whose PEs share the N GPUs evenly (the others are
   listed as skipped), and with NCCL every config that fits one rank per GPU, plus two 2-rank
   layouts of the issue (TP1 -> TP1, and collocated TP2 -> TP1/EP2) and the world-1 row; each
   NCCL row also with REFITCTL_STAGED_ZERO_COPY=0 (every byte staged: before/after); each at the
   seed's size and at a large size (hidden 4096, 64 experts, --large-layers layers).
3. Per row: the busiest GPU's bytes crossing to other GPUs (`network_bytes_max_rank`: max of in
   and out; PEs on one GPU count together), whether that GPU sends and receives (both ways) or
   only one of them, the bound = max(network bytes / the method's ceiling for those directions,
   bytes copied inside one GPU / local copy ceiling), `ratio_to_bound` = bound / median, and
   `network_ratio` = (network bytes / median) / ceiling (issue 13's goal: >= 0.85 for NCCL,
   >= 0.90 for NVSHMEM); the staged transport's phases (median ms of the slowest rank).

Writes benchmarks/results/DATE-GPU-Ngpu.json (device, command, ceilings, rows) and
DATE-GPU-Ngpu-ceilings.json (for `refitctl plan/submit --ceilings FILE`); prints a table last.
NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 are set in this
process and so in every process it starts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refit_core.environment import SAFE_ENV  # noqa: E402
from orchestrator.configs import SWEEPS, resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402
from refit_core.errors import ConfigError  # noqa: E402
from refit_core.planning.plan import Plan, plan_transfers  # noqa: E402

SEED = list(SWEEPS["8gpu"])
LARGE = {  # ~1.25 GB of bf16 per layer: hidden 4096, 64 experts (refit_bench.py's LARGE, deeper)
    "hidden_size": 4096, "num_attention_heads": 32, "ffn_hidden_size": 11008,
    "moe_ffn_hidden_size": 1024, "num_experts": 64, "moe_shared_expert_intermediate_size": 2048,
    "seq_length": 4096, "max_position_embeddings": 4096,
}
PAIRS = {  # the two 2-rank NCCL layouts issue 13 measured (seed model)
    "tp1-to-tp1": {"tensor_model_parallel_size": 1, "expert_model_parallel_size": 1,
                   "rl_inference_tensor_model_parallel_size": 1, "rl_inference_expert_model_parallel_size": 1,
                   "refit_mode": "non-collocated"},
    "tp2-to-tp1ep2-collocated": {"tensor_model_parallel_size": 2, "expert_model_parallel_size": 1,
                                 "rl_inference_tensor_model_parallel_size": 1,
                                 "rl_inference_expert_model_parallel_size": 2, "refit_mode": "collocated"},
    "world-1": {"tensor_model_parallel_size": 1, "expert_model_parallel_size": 1,
                "rl_inference_tensor_model_parallel_size": 1, "rl_inference_expert_model_parallel_size": 1,
                "refit_mode": "collocated"},
}
GIB = 1 << 30


# ----------------------------------------------------------------------------- pure: rows and bounds

@dataclass(frozen=True)
class Case:
    """One refit row to run: a config, and how (zero-copy on or off for the staged transport)."""

    config: RunConfig
    size: str  # "seed" or "large"
    zero_copy: bool = True
    skip: str = ""  # why it is not run (uneven placement, does not divide, ...)

    @property
    def label(self) -> str:
        return self.config.name + ("" if self.zero_copy or self.config.run.method != "nccl" else " (all staged)")


def gpu_of(rank: int, gpus: int) -> int:
    """The GPU of a rank under the local launcher (LOCAL_RANK = rank; device = local rank % GPUs)."""
    return rank % gpus


def evenly_placed(pes: int, gpus: int) -> bool:
    """Every GPU in use holds the same number of PEs."""
    return pes <= gpus or pes % gpus == 0


def make_config(name: str, method: str, size: str, iterations: int, large_layers: int) -> RunConfig:
    base = resolve(name if name in SEED else "config-1")
    over: dict[str, Any] = {"refit_method": method, "num_benchmark_iterations": iterations}
    over.update(PAIRS.get(name, {}))
    if size == "large":
        over.update(LARGE, num_layers=large_layers)
    cfg = apply_overrides(base, over)
    return cfg.with_changes(gpus=cfg.world().gpus_used, name=name + ("-large" if size == "large" else ""),
                            gpu_memory_gb=1e6)  # PEs share GPUs here: the per-rank memory check does not apply


def cases(gpus: int, quick: bool, iterations: dict[str, int], large_layers: int, sizes: tuple[str, ...],
          only: set[str] | None = None) -> list[Case]:
    """Every row this run should have, in order: NVSHMEM seed rows, then NCCL rows (on, off)."""
    out: list[Case] = []
    nvshmem = ["config-4", "collocated-4"] if quick else SEED
    nccl = [n for n in SEED if not quick] + list(PAIRS)
    for size in sizes:
        for name in nvshmem:
            if only and name not in only:
                continue
            out.append(_case(name, "nvshmem", size, iterations[size], large_layers, gpus, True))
        for name in nccl:
            if only and name not in only:
                continue
            for zc in ((True,) if name == "world-1" else (True, False)):  # world 1: nothing to stage
                c = _case(name, "nccl", size, iterations[size], large_layers, gpus, zc)
                if c.skip.startswith("needs") and name in SEED:
                    continue  # a seed layout larger than this machine: not a row here
                out.append(c)
    return out


def _case(name: str, method: str, size: str, iters: int, layers: int, gpus: int, zc: bool) -> Case:
    try:
        cfg = make_config(name, method, size, iters, layers)
        cfg.validate()
    except ConfigError as e:
        stand_in = resolve(name if name in SEED else "config-1").with_changes(name=name, method=method)
        return Case(stand_in, size, zc, f"invalid: {e}")
    pes = cfg.world().gpus_used
    if method == "nccl" and pes > gpus:
        return Case(cfg, size, zc, f"needs {pes} GPUs (one rank per GPU), {gpus} here")
    if method == "nvshmem" and not evenly_placed(pes, gpus):
        return Case(cfg, size, zc, f"uneven: {pes} PEs on {gpus} GPUs")
    return Case(cfg, size, zc)


@dataclass(frozen=True)
class Traffic:
    """The busiest GPU's bytes: crossing to other GPUs (max of in, out), and copied inside it."""

    network_bytes_max: int
    both_ways: bool
    local_bytes_max: int
    gpus_used: int


def traffic(plan: Plan, gpus: int, placement: dict[int, int] | None = None) -> Traffic:
    """Per-GPU bytes of a plan with ranks on GPUs (`placement`, default `gpu_of`)."""
    where = placement or {r: gpu_of(r, gpus) for r in range(plan.world.world_size)}
    out: dict[int, int] = {}
    inn: dict[int, int] = {}
    local: dict[int, int] = {}
    for (s, d), b in plan.pair_bytes.items():
        gs, gd = where[s], where[d]
        if gs == gd:
            local[gd] = local.get(gd, 0) + b
        else:
            out[gs] = out.get(gs, 0) + b
            inn[gd] = inn.get(gd, 0) + b
    used = set(out) | set(inn) | set(local)
    busiest = max(used, key=lambda g: (max(out.get(g, 0), inn.get(g, 0)), -g), default=0)
    net = max(out.get(busiest, 0), inn.get(busiest, 0))
    return Traffic(net, bool(out.get(busiest) and inn.get(busiest)), max(local.values(), default=0), len(used))


def ceiling_name(method: str, both_ways: bool) -> str:
    engine = "peer_copy" if method == "nvshmem" else "nccl"
    return f"{engine}_{'both_ways' if both_ways else 'one_way'}"


def pick(by_size: dict[str, float], nbytes: int) -> float | None:
    """The ceiling measured at the size nearest `nbytes` (log scale)."""
    if not by_size:
        return None
    size = min(by_size, key=lambda s: abs(math.log2(int(s)) - math.log2(max(nbytes, 1))))
    return by_size[size]


def probe_size(nbytes: int, cap: int) -> int:
    """A power of two near `nbytes`, within [16 MiB, cap]."""
    return int(min(max(1 << round(math.log2(max(nbytes, 1))), 16 << 20), cap))


def bound(t: Traffic, method: str, gpus: int, ceilings_by_size: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The row's bound from the ceilings with the same directions in use, and where it comes from."""
    name = ceiling_name(method, t.both_ways) if t.network_bytes_max and gpus > 1 else None
    link = pick(ceilings_by_size.get(name, {}), t.network_bytes_max) if name else None
    local = pick(ceilings_by_size.get("local_copy", {}), t.local_bytes_max)
    parts = {}
    if link:
        parts["network_ms"] = t.network_bytes_max / (link * 1e6)
    if local and t.local_bytes_max:
        parts["local_ms"] = t.local_bytes_max / (local * 1e6)
    return {"ceiling": name, "ceiling_GBps": link, "local_copy_GBps": local,
            "bound_ms": max(parts.values()) if parts else None, **parts}


def ceilings_record(device: str, date: str, gpus: int, ceilings: dict[str, float],
                    by_size: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The ceilings file `refitctl --ceilings` reads (refit_core/planning/ceilings.py)."""
    return {"device": device, "date": date, "gpus": gpus, "ceilings": ceilings, "ceilings_by_size": by_size,
            "note": "GB/s (10^9 B/s) delivered; *_both_ways: each direction while both run at once"}


def slug(device: str) -> str:
    m = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", device.upper())
    return m.group(1).lower() if m else "gpu"


# ----------------------------------------------------------------------------- GPU: ceilings

def _events_ms(fn, iters: int) -> float:  # noqa: ANN001
    import torch

    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / iters


def local_copy(nbytes: int, iters: int) -> float:
    import torch

    a = torch.ones(nbytes, dtype=torch.uint8, device="cuda:0")
    b = torch.empty_like(a)
    ms = _events_ms(lambda: b.copy_(a), iters)
    assert torch.equal(a[-16:], b[-16:])
    del a, b
    torch.cuda.empty_cache()
    return nbytes / (ms * 1e6)


QUANTISE_COLS = 7168  # Kimi K2's hidden size: the quantiser's ceiling on rows of its widest weights


def quantise_ceilings(nbytes: int, iters: int) -> tuple[float, float]:
    """The fused FP8 quantiser (refit_core/execution/fp8_kernel.py) on one BF16 weight of about
    `nbytes`, [nbytes / 2 / 7168, 7168]: GB/s of BF16 read by its scale pass (block maxima -> scales)
    and by its quantise pass (BF16 -> e4m3 bytes), each timed alone; the first 1024 rows' bytes and
    scales are checked against the torch reference, bitwise."""
    import torch

    from refit_core.execution.fp8_kernel import TensorQuantiser
    from refit_core.execution.quantize import FP8, quantise

    rows = max(nbytes // (2 * QUANTISE_COLS), 128)
    w = torch.randn(rows, QUANTISE_COLS, device="cuda:0").mul_(30).bfloat16()
    fused = TensorQuantiser(rows, QUANTISE_COLS, w.device)
    out = torch.empty(w.shape, dtype=FP8, device=w.device)
    scales_ms = _events_ms(lambda: fused.scales(w), iters)
    s = fused.scales(w)
    quantise_ms = _events_ms(lambda: fused.values(w, s, out), iters)
    head = min(rows, 1024)
    want_q, want_s = quantise(w[:head])
    assert torch.equal(out[:head].view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(s[: want_s.shape[0]].view(torch.int32), want_s.view(torch.int32))
    read = w.numel() * 2
    del w, out, s
    torch.cuda.empty_cache()
    return read / (scales_ms * 1e6), read / (quantise_ms * 1e6)


def peer_copy(nbytes: int, iters: int) -> tuple[float, float]:
    """GB/s GPU 0 -> 1 alone, and each way while 0 -> 1 and 1 -> 0 run at once (host timed)."""
    import torch

    a0 = torch.ones(nbytes, dtype=torch.uint8, device="cuda:0")
    b1 = torch.empty(nbytes, dtype=torch.uint8, device="cuda:1")
    a1 = torch.ones(nbytes, dtype=torch.uint8, device="cuda:1")
    b0 = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
    s0, s1 = torch.cuda.Stream("cuda:0"), torch.cuda.Stream("cuda:1")

    def run(both: bool) -> float:
        def once() -> None:
            with torch.cuda.stream(s0):
                b1.copy_(a0, non_blocking=True)
            if both:
                with torch.cuda.stream(s1):
                    b0.copy_(a1, non_blocking=True)

        once()
        s0.synchronize()
        s1.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            once()
        s0.synchronize()
        s1.synchronize()
        return nbytes / ((time.perf_counter() - t0) / iters * 1e9)

    one, both = run(False), run(True)
    assert bool(torch.all(b1[-16:] == 1)) and bool(torch.all(b0[-16:] == 1))
    del a0, a1, b0, b1
    for d in (0, 1):
        with torch.cuda.device(d):
            torch.cuda.empty_cache()
    return one, both


def nccl_ceilings(sizes: list[int], iters: int, work: Path) -> dict[str, dict[str, float]]:
    from jobs.local import launch

    run = work / "nccl-probe"
    run.mkdir(parents=True, exist_ok=True)
    (run / "probe.json").write_text(json.dumps({"sizes": sizes, "iterations": iters}))
    codes = launch(run, 2, timeout_s=300, grace_s=20, module="benchmarks.nccl_probe")
    if any(codes):
        logs = "".join((run / "logs" / f"rank-{r}.log").read_text()[-1500:] for r in range(2))
        raise RuntimeError(f"NCCL probe failed {codes}: {logs}")
    got = json.loads((run / "nccl-probe.json").read_text())
    return {"nccl_one_way": got["one_way"], "nccl_both_ways": got["both_ways"]}


# ----------------------------------------------------------------------------- GPU: refit rows

def placement_of(run_dir: Path, world: int, gpus: int) -> dict[int, int]:
    """Each rank's GPU as its log says ('device cuda:K'), else `gpu_of`."""
    out = {}
    for r in range(world):
        log = run_dir / "logs" / f"rank-{r}.log"
        m = re.search(r"device cuda:(\d+)", log.read_text(errors="replace")) if log.exists() else None
        out[r] = int(m.group(1)) if m else gpu_of(r, gpus)
    return out


def run_case(case: Case, gpus: int, work: Path, by_size: dict[str, dict[str, float]]) -> dict[str, Any]:
    from jobs.local import run_locally

    cfg = case.config
    plan = plan_transfers(cfg.inventory(), cfg.world(), precision=cfg.run.inference_precision)
    row: dict[str, Any] = {"config": case.label, "method": cfg.run.method, "size": case.size, "zero_copy": case.zero_copy,
                           "gpus": min(gpus, cfg.world().gpus_used), "pes": cfg.world().gpus_used,
                           "precision": plan.precision, "bytes": plan.delivered_bytes,
                           "wire_bytes": plan.network_bytes}
    if case.skip:
        return {**row, "verified": None, "skipped": case.skip}
    run_dir = work / f"{cfg.name}-{cfg.run.method}-{'zc' if case.zero_copy else 'staged'}"
    t0 = time.monotonic()
    codes, res = run_locally(cfg.with_changes(staged_zero_copy=case.zero_copy), run_dir, timeout_s=300, grace_s=20)
    row["wall_s"] = round(time.monotonic() - t0, 1)
    t = traffic(plan, gpus, placement_of(run_dir, cfg.hardware.gpus, gpus))
    row.update(network_bytes_max_rank=t.network_bytes_max, both_ways=t.both_ways, local_bytes_max_gpu=t.local_bytes_max,
               gpus=t.gpus_used, **bound(t, cfg.run.method, gpus, by_size))
    if any(codes) or not res or not res.get("verified"):
        logs = sorted((run_dir / "logs").glob("*.log"))
        tail = next((p.read_text(errors="replace")[-1500:] for p in logs if "Error" in p.read_text(errors="replace")), "")
        return {**row, "verified": False, "error": f"exit codes {codes}: {tail}"}
    timed = [i for i in res["iterations"] if not i["warmup"]]
    med = res["median_ms"]
    phases = sorted({k for i in timed for k in i.get("phases_ms", {})})
    row.update(verified=True, median_ms=med, min_ms=res["min_ms"], GBps=res["GBps"],
               ratio_to_bound=(row["bound_ms"] / med) if row.get("bound_ms") else None,
               network_ratio=(t.network_bytes_max / (med * 1e6) / row["ceiling_GBps"])
               if row.get("ceiling_GBps") and t.network_bytes_max else None,
               phases_ms={k: statistics.median(i.get("phases_ms", {}).get(k, 0.0) for i in timed) for k in phases},
               launches=timed[-1].get("launches"), transport=res.get("transport", {}),
               extra_bytes_max=res.get("extra_bytes_max"), extra_bytes_measured_max=res.get("extra_bytes_measured_max"),
               bucket_bytes=cfg.run.bucket_bytes, at_least_100ms=med >= 100.0)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, fmt: str) -> str:
        return (fmt % v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"

    head = (f"{'config':36} {'method':7} {'GPUs':>4} {'PEs':>3} {'net MB':>9} {'dir':>4} {'median ms':>10} "
            f"{'bound ms':>9} {'ratio':>6} {'net/ceil':>8} {'ok':>5} {'extra MB':>8}  phases ms")
    lines = [head]
    for r in rows:
        ph = " ".join(f"{k}={v:.2f}" for k, v in (r.get("phases_ms") or {}).items())
        ok = "skip" if r.get("skipped") else str(r.get("verified"))
        extra = r.get("extra_bytes_measured_max") or r.get("extra_bytes_max")
        lines.append(f"{r['config']:36} {r['method']:7} {r['gpus']:>4} {r['pes']:>3} "
                     f"{f((r.get('network_bytes_max_rank') or 0) / 1e6, '%.1f'):>9} "
                     f"{('both' if r.get('both_ways') else 'one') if r.get('network_bytes_max_rank') else '-':>4} "
                     f"{f(r.get('median_ms'), '%.3f'):>10} {f(r.get('bound_ms'), '%.3f'):>9} "
                     f"{f(r.get('ratio_to_bound'), '%.2f'):>6} {f(r.get('network_ratio'), '%.2f'):>8} {ok:>5} "
                     f"{f(extra / 1e6 if extra else None, '%.1f'):>8}  {ph or r.get('skipped', '')}")
    return "\n".join(lines)


def measure_ceilings(gpus: int, wanted: list[int], work: Path) -> dict[str, dict[str, float]]:
    """Local copy and the quantiser's two passes at each size; with 2+ GPUs peer copy and NCCL."""
    by_size: dict[str, dict[str, float]] = {"local_copy": {}, "quantise_amax": {}, "quantise": {}}
    for s in wanted:
        by_size["local_copy"][str(s)] = local_copy(s, 10)
        by_size["quantise_amax"][str(s)], by_size["quantise"][str(s)] = quantise_ceilings(s, 10)
    if gpus >= 2:
        by_size["peer_copy_one_way"], by_size["peer_copy_both_ways"] = {}, {}
        for s in wanted:
            by_size["peer_copy_one_way"][str(s)], by_size["peer_copy_both_ways"][str(s)] = peer_copy(s, 10)
        by_size.update(nccl_ceilings(wanted, 10, work))
    return by_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: seed sizes, a few rows, few iterations")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations at the seed size (default 10)")
    ap.add_argument("--large-iterations", type=int, default=3, help="timed iterations at the large size")
    ap.add_argument("--large-layers", type=int, default=None, help="layers of the large model (default 32; 8 on 1 GPU)")
    ap.add_argument("--no-large", action="store_true", help="seed sizes only")
    ap.add_argument("--configs", help="comma-separated subset of row names (seed configs, " + ", ".join(PAIRS) + ")")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/DATE-GPU-Ngpu.json)")
    args = ap.parse_args(argv)
    os.environ.update(SAFE_ENV)  # every process this run starts inherits it
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 1:
        print("gpu_bench: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    t_start = time.time()
    iters = {"seed": args.iterations or (3 if args.quick else 10), "large": args.large_iterations}
    layers = args.large_layers or (8 if gpus == 1 else 32)
    sizes = ("seed",) if args.quick or args.no_large else ("seed", "large")
    todo = cases(gpus, args.quick, iters, layers, sizes, set(args.configs.split(",")) if args.configs else None)
    mem = torch.cuda.get_device_properties(0).total_memory
    cap = min(4 * GIB, mem // 8)
    wanted = sorted({probe_size(traffic(plan_transfers(c.config.inventory(), c.config.world()), gpus).network_bytes_max
                                or GIB, cap) for c in todo if not c.skip})
    if args.quick:
        wanted = wanted[-1:]
    print(f"{device} x {gpus}; ceilings at {[f'{s >> 20} MiB' for s in wanted]}; {len(todo)} rows", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    by_size = measure_ceilings(gpus, wanted, work)
    ceilings = {name: v[str(wanted[-1])] for name, v in by_size.items() if str(wanted[-1]) in v}
    print("ceilings (GB/s at the largest size):", json.dumps({k: round(v, 1) for k, v in ceilings.items()}), flush=True)
    path = args.out or Path(__file__).resolve().parent / "results" / f"{date}-{slug(device)}-{gpus}gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in todo:
        row = run_case(c, gpus, work, by_size)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "transport"}), flush=True)
  # kept current: a run cut short keeps its rows
        path.write_text(json.dumps({"device": device, "gpus": gpus, "date": date, "partial": True,
                                       "command": "python " + " ".join(sys.argv), "ceilings": ceilings,
                                       "ceilings_by_size": by_size, "rows": rows}, indent=1))
    out = {"device": device, "gpus": gpus, "date": date, "command": "python " + " ".join(sys.argv),
           "env": {k: os.environ.get(k) for k in SAFE_ENV}, "ceilings": ceilings, "ceilings_by_size": by_size,
           "rows": rows, "wall_s": round(time.time() - t_start, 1)}
    path.write_text(json.dumps(out, indent=1))
    cpath = path.with_name(path.stem + "-ceilings.json")
    cpath.write_text(json.dumps(ceilings_record(device, date, gpus, ceilings, by_size), indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {path} and {cpath} ({out['wall_s']} s)\n")
    print(table(rows))
    ran = [r for r in rows if not r.get("skipped")]
    return 0 if ran and all(r.get("verified") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
