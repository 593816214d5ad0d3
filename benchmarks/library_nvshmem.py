"""What NVSHMEM costs on the caller's tensors: refit_core.library with --refit-method nvshmem, PEs on one GPU.

The library refits tensors where they live, so NVSHMEM, whose peers read only its symmetric heap, stages
each round through a heap buffer bounded by the bucket (refit_core/execution/transports/shared.py): the
sender packs, a barrier, the receivers unpack from its heap, a barrier. Every byte that crosses PEs is
copied twice on the GPU (pack, unpack), a local byte once. With every PE on one GPU the ceiling is that
GPU's copy rate, measured in the same run (a device-to-device copy of 1 GiB): the bound of a call is
(bytes packed + bytes unpacked + local bytes) / copy rate, and `of_bound` is bound / median call.

    python benchmarks/library_nvshmem.py [--configs config-4,config-1] [--size seed|reduced] [--calls 10]

Writes benchmarks/results/<date>-<gpu>-library-nvshmem.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.configs import resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402

REDUCED = {"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8, "ffn_hidden_size": 1024, "num_experts": 8,
           "moe_shared_expert_intermediate_size": 512, "seq_length": 128, "max_position_embeddings": 128,
           "vocab_size": 1000}


def row_config(name: str, size: str, bucket: int) -> RunConfig:
    cfg = apply_overrides(resolve(name), {"refit_method": "nvshmem", **(REDUCED if size == "reduced" else {})})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used, bucket_bytes=bucket)
    cfg.validate(gpu_memory=False)
    return cfg


def copy_gbps() -> float:
    """Device-to-device copy of 1 GiB on this GPU, GB/s delivered (median of 5)."""
    import torch

    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return a.numel() / statistics.median(times) / 1e6


def rank_main(cfg: RunConfig, calls: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from refit_core.library import Refit
    from refit_core.library.local import synthetic_shards

    torch.cuda.set_device(0)
    src, dst = synthetic_shards(cfg, "source", True, "cuda:0"), synthetic_shards(cfg, "destination", False, "cuda:0")
    t0 = time.perf_counter()
    refit = Refit.build(cfg, src, dst, verify=False)
    first = refit()
    build_ms = (time.perf_counter() - t0) * 1e3
    refit.verify = True
    checked = refit().transfers_checked  # the digest check raises VerificationError on a wrong byte
    refit.verify = False
    times = [refit().time_ms for _ in range(calls)]
    out = {"rank": dist.get_rank(), "times_ms": times, "first_ms": first.time_ms, "build_and_first_ms": build_ms,
           "extra_bytes": refit.extra_bytes, "rounds": refit.transport.info.get("rounds"), "verified": True, "checked": checked}
    refit.close()
    dist.barrier()
    if dist.get_rank() == 0:
        out["copy_gbps"] = copy_gbps()
    return out


def summarize(name: str, cfg: RunConfig, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    plan = cfg.plan()
    moved = sum(t.bytes_in + t.bytes_out + t.bytes_local for t in plan.per_rank.values())
    delivered = sum(t.bytes_in + t.bytes_local for t in plan.per_rank.values())
    per_call = [max(r["times_ms"][i] for r in ranks) for i in range(len(ranks[0]["times_ms"]))]  # slowest PE
    median = statistics.median(per_call)
    gbps = ranks[0]["copy_gbps"]
    bound = moved / gbps / 1e6
    return {"config": name, "pes": cfg.hardware.gpus, "delivered_bytes": delivered, "copied_bytes": moved,
            "median_ms": round(median, 3), "min_ms": round(min(per_call), 3), "bound_ms": round(bound, 3),
            "of_bound": round(bound / median, 3), "copy_gbps": round(gbps, 1),
            "first_ms": round(max(r["build_and_first_ms"] for r in ranks), 3),
            "heap_staging_bytes": max(r["extra_bytes"] for r in ranks), "rounds": max(r["rounds"] or 0 for r in ranks),
            "verified": all(r["verified"] for r in ranks)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="config-4,config-6,config-1")
    ap.add_argument("--size", choices=("seed", "reduced"), default="seed")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--bucket", type=int, default=1 << 30, help="bucket bytes (bounds the heap staging)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from refit_core.library.local import run_local

    gpu = "gpu"
    doc: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "size": args.size, "bucket": args.bucket,
                           "started": datetime.datetime.now().isoformat(timespec="seconds"), "rows": []}
    out = args.out
    for name in args.configs.split(","):
        cfg = row_config(name, args.size, args.bucket)
        ranks = run_local(cfg.hardware.gpus, rank_main, cfg, args.calls, timeout_s=300)
        row = summarize(name, cfg, ranks)
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
        if out is None:
            gpu = _gpu_tag()
            out = ROOT / "benchmarks" / "results" / f"{datetime.date.today().isoformat()}-{gpu}-library-nvshmem.json"
        doc["device"] = gpu
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))
    print("| row | PEs | MB copied | median ms | bound ms | of bound | heap staging MB | rounds | first ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in doc["rows"]:
        print(f"| {r['config']} | {r['pes']} | {r['copied_bytes'] / 1e6:.1f} | {r['median_ms']} | {r['bound_ms']} | "
              f"{r['of_bound']} | {r['heap_staging_bytes'] / 1e6:.1f} | {r['rounds']} | {r['first_ms']} |")
    print(f"written: {out}")
    return 0 if all(r["verified"] for r in doc["rows"]) else 1


def _gpu_tag() -> str:
    """The GPU's name as a file tag (nvidia-smi: the parent never starts CUDA, its ranks are forked)."""
    import subprocess

    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "gpu"
    return "h200" if "H200" in name else "h100" if "H100" in name else "gpu"


if __name__ == "__main__":
    sys.exit(main())
