"""Refit on ONE GPU against the copy ceilings measured in the same run, and against the naive way.

    python benchmarks/refit_bench.py --out benchmarks/results/DATE-h100-1gpu.json

1. Ceilings: a single-process device-to-device copy, and for every PE count used below the
   shared-GPU copy (N NVSHMEM PEs each copying its share of the same bytes into a peer's
   symmetric buffer at once, barrier to barrier; benchmarks/probe_copy.py). A refit row's
   ratio is against the ceiling with as many PEs as copy in it (the sources when they write,
   the destinations when they read: placement.py); its ratio against all its PEs copying is
   kept too.
2. The NVSHMEM refit of config-1..6 (placement auto, or REFITCTL_NVSHMEM_PLACEMENT) at the seed's sizes and of a larger model (all PEs on the GPU).
3. The naive baseline on the same layouts (gather whole tensors, send whole, slice).
4. The single-process path (world size 1: every slice a local copy) against the single-process
   copy of the same bytes.
5. Optionally (--mps) the shared ceiling and one refit again under CUDA MPS, started and stopped
   inside this run.
Every refit row also carries the device memory its transport took beyond the shards, measured
(extra_bytes_measured_max: the largest over PEs), against the bucket size.
Prints a table and writes one JSON object: device, command, ceilings, rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.local import launch, run_locally  # noqa: E402
from orchestrator.configs import resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402

LARGE = {  # ~10 GB of bf16: hidden 4096, 8 layers, 64 experts
    "num_layers": 8, "hidden_size": 4096, "num_attention_heads": 32, "ffn_hidden_size": 11008,
    "moe_ffn_hidden_size": 1024, "num_experts": 64, "moe_shared_expert_intermediate_size": 2048,
    "seq_length": 4096, "max_position_embeddings": 4096,
}
SEED = ["config-1", "config-2", "config-3", "config-4", "config-5", "config-6"]


def single_copy_ceiling(nbytes: int, iters: int = 20) -> float:
    """Median GB/s (bytes delivered once) of one device-to-device copy of `nbytes`."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    times = []
    for k in range(iters + 3):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        if k >= 3:
            times.append(s.elapsed_time(e))
    assert torch.equal(a, b)
    del a, b
    torch.cuda.empty_cache()
    return nbytes / (statistics.median(times) * 1e6)


def shared_ceiling(pes: int, nbytes: int, work: Path, iters: int) -> dict:
    run = work / f"probe-{pes}-{nbytes}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "probe.json").write_text(json.dumps({"bytes": nbytes, "iterations": iters, "warmup": 3}))
    codes = launch(run, pes, timeout_s=300, module="benchmarks.probe_copy")
    if any(codes):
        raise RuntimeError(f"probe with {pes} PEs failed: {codes}: {(run / 'logs' / 'rank-0.log').read_text()[-2000:]}")
    per = [json.loads((run / f"probe-rank-{r}.json").read_text()) for r in range(pes)]
    its = [max(p["times_ms"][k] for p in per) for k in range(iters)]
    moved = nbytes // pes // 256 * 256 * pes
    med = statistics.median(its)
    return {"pes": pes, "bytes": moved, "median_ms": med, "GBps": moved / (med * 1e6),
            "verified": all(p["verified"] for p in per), "sync": per[0].get("sync")}


def refit(cfg: RunConfig, work: Path, tag: str) -> dict:
    cfg.validate()
    codes, res = run_locally(cfg, work / tag, timeout_s=420)
    if any(codes) or not res or not res["verified"]:
        logs = sorted((work / tag / "logs").glob("*.log"))
        tail = next((p.read_text()[-2500:] for p in logs if "Error" in p.read_text()), "")
        return {"verified": False, "error": f"exit codes {codes}: {tail}"}
    timed = [i["time_ms"] for i in res["iterations"] if not i["warmup"]]
    return {"verified": True, "bytes": res["delivered_bytes"], "median_ms": res["median_ms"], "min_ms": min(timed),
            "GBps": res["GBps"], "launches": res["iterations"][-1]["launches"],
            "extra_bytes_max": res["extra_bytes_max"], "extra_bytes_measured_max": res.get("extra_bytes_measured_max"),
            "bucket_bytes": cfg.run.bucket_bytes, "transport": res.get("transport", {})}


def config_for(name: str, method: str, iters: int, large: bool) -> RunConfig:
    cfg = resolve(name)
    over: dict[str, object] = {"refit_method": method, "num_benchmark_iterations": iters}
    if large:
        over.update(LARGE)
    cfg = apply_overrides(cfg, over)
    return cfg.with_changes(gpus=cfg.world().gpus_used, name=f"{name}{'-large' if large else ''}")


def single_process(cfg_name: str, iters: int, large: bool) -> RunConfig:
    cfg = config_for(cfg_name, "nccl", iters, large)
    return apply_overrides(cfg, {
        "tensor_model_parallel_size": 1, "expert_model_parallel_size": 1, "rl_inference_tensor_model_parallel_size": 1,
        "rl_inference_expert_model_parallel_size": 1, "refit_mode": "collocated", "gpus": 1,
    }).with_changes(name=f"single-process{'-large' if large else ''}")


class Mps:
    """CUDA MPS for the duration of a `with` block (a daemon of this run; the card is not touched)."""

    def __enter__(self) -> "Mps":
        self.dir = Path(tempfile.mkdtemp(prefix="mps-"))
        os.environ["CUDA_MPS_PIPE_DIRECTORY"] = str(self.dir / "pipe")
        os.environ["CUDA_MPS_LOG_DIRECTORY"] = str(self.dir / "log")
        for d in ("pipe", "log"):
            (self.dir / d).mkdir()
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)
        time.sleep(1)
        for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            os.environ.pop(k, None)


def _mb(n: int | None) -> float | None:
    return None if n is None else n / 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--naive-iterations", type=int, default=10)
    ap.add_argument("--configs", default=",".join(SEED))
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--mps", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="refit-bench-"))
    t0 = time.time()
    ceilings: dict[str, object] = {"single_process_GBps": {}, "shared": {}}
    rows: list[dict] = []

    def ceiling_single(nbytes: int) -> float:
        key = str(nbytes)
        if key not in ceilings["single_process_GBps"]:
            ceilings["single_process_GBps"][key] = single_copy_ceiling(nbytes)
        return ceilings["single_process_GBps"][key]

    def ceiling_shared(pes: int, nbytes: int) -> dict:
        key = f"{pes}:{nbytes}"
        if key not in ceilings["shared"]:
            ceilings["shared"][key] = shared_ceiling(pes, nbytes, work, args.iterations)
        return ceilings["shared"][key]

    ceiling_single(1 << 30)
    cases = [(n, False) for n in args.configs.split(",")] + ([] if args.no_large else [("config-1", True)])
    for name, large in cases:
        cfg = config_for(name, "nvshmem", args.iterations, large)
        r = refit(cfg, work, cfg.name + "-nvshmem")
        pes = cfg.world().gpus_used
        naive = refit(config_for(name, "naive", args.naive_iterations, large), work, cfg.name + "-naive")
        row = {"config": cfg.name, "method": "nvshmem", "pes": pes, **r,
               "naive_median_ms": naive.get("median_ms"), "naive_verified": naive.get("verified"),
               "naive_launches": naive.get("launches"), **({"naive_error": naive["error"][-800:]} if "error" in naive else {})}
        if r.get("verified"):
            # The processes that copy: sources when they write (push), destinations when they read
            # (pull). The others launch nothing, so the GPU is time-sliced among the copiers only.
            w = cfg.world()
            copiers = len(w.destination.ranks) if r["transport"].get("placement") == "pull" else len(w.source.ranks)
            c = ceiling_shared(copiers, r["bytes"])
            row["copying_pes"] = copiers
            row["ceiling_GBps"] = c["GBps"]
            row["ratio_to_ceiling"] = r["GBps"] / c["GBps"]
            every = ceiling_shared(pes, r["bytes"])
            row["all_pe_ceiling_GBps"] = every["GBps"]
            row["ratio_to_all_pe_ceiling"] = r["GBps"] / every["GBps"]
            row["speedup_vs_naive"] = (naive["median_ms"] / r["median_ms"]) if naive.get("verified") else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    for large in ([False] if args.no_large else [False, True]):
        cfg = single_process("config-1", args.iterations, large)
        r = refit(cfg, work, cfg.name)
        row = {"config": cfg.name, "method": "nccl (world 1, local copies)", "pes": 1, **r}
        if r.get("verified"):
            row["ceiling_GBps"] = ceiling_single(r["bytes"])
            row["ratio_to_ceiling"] = r["GBps"] / row["ceiling_GBps"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    mps_rows = []
    if args.mps and shutil.which("nvidia-cuda-mps-control"):
        try:
            with Mps():
                for name in ("config-2", "config-1"):
                    cfg = config_for(name, "nvshmem", args.iterations, not args.no_large)
                    r = refit(cfg, work, cfg.name + "-mps")
                    pes = cfg.world().gpus_used
                    c = shared_ceiling(pes, r.get("bytes") or (1 << 30), work / "mps", args.iterations)
                    mps_rows.append({"config": cfg.name, "pes": pes, "refit": r, "shared_ceiling": c})
                    print("MPS", json.dumps(mps_rows[-1]), flush=True)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
            mps_rows.append({"error": str(e)[:2000]})
    elif args.mps:
        mps_rows.append({"error": "nvidia-cuda-mps-control not found"})

    out = {"device": device, "date": datetime.date.today().isoformat(),
           "nvshmem_sync": os.environ.get("REFITCTL_NVSHMEM_SYNC", "auto"),
           "command": "python " + " ".join(sys.argv), "ceilings": ceilings, "rows": rows, "mps": mps_rows,
           "wall_s": round(time.time() - t0, 1)}
    print(f"\n{'config':24} {'PEs':>3} {'cp':>2} {'bytes':>12} {'median ms':>10} {'min ms':>9} {'GB/s':>8} "
          f"{'ceiling':>8} {'ratio':>6} {'all-PE':>6} {'naive ms':>9} {'speedup':>7} {'launch':>6} {'place':>5} {'extra MB':>8}")
    for r in rows:
        f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{r['config']:24} {r['pes']:>3} {f(r.get('copying_pes', r['pes']), '%d'):>2} {f(r.get('bytes'), '%d'):>12} {f(r.get('median_ms'), '%.3f'):>10} "
              f"{f(r.get('min_ms'), '%.3f'):>9} {f(r.get('GBps'), '%.1f'):>8} {f(r.get('ceiling_GBps'), '%.1f'):>8} "
              f"{f(r.get('ratio_to_ceiling'), '%.2f'):>6} {f(r.get('ratio_to_all_pe_ceiling'), '%.2f'):>6} "
              f"{f(r.get('naive_median_ms'), '%.2f'):>9} "
              f"{f(r.get('speedup_vs_naive'), '%.1f'):>7} {f(r.get('launches'), '%d'):>6} "
              f"{r.get('transport', {}).get('placement', '-'):>5} {f(_mb(r.get('extra_bytes_measured_max')), '%.1f'):>8}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.get("verified") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
