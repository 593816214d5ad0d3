"""BF16 and FP8 destinations side by side on this machine's GPUs (issue 17: FP8 quantised by the sender).

    python benchmarks/fp8_bench.py            # ~3 minutes on one H200
    python benchmarks/fp8_bench.py --quick    # smoke test: seed size only

Rows, each run twice (--rl-inference-precision bf16, then fp8) through the local launcher with
gpu_bench.py's machinery (ceilings measured in the same run, bounds, phases): on 1 GPU the NVSHMEM
rows config-4 and collocated-4 (PEs sharing the GPU) and NCCL's world-1 row; with 2+ GPUs also the
NCCL rows that fit one rank per GPU (config-4, tp1-to-tp1, tp2-to-tp1ep2-collocated); each at the
seed's size and at the large size. Per row: bytes on the wire (`wire_bytes`; FP8: one byte per
quantised weight plus the float32 scales), the median iteration time, the quantisation phase's own
median (`quantise_ms`, part of the iteration), and `ratio_to_bound`: the bound computed from the
row's own bytes (FP8 bytes for FP8 rows) over the median. Writes benchmarks/results/DATE-GPU-fp8.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_bench import (Case, _case, local_copy, nccl_ceilings, peer_copy, probe_size, run_case,  # noqa: E402
                                  slug, table, traffic)
from refit_core.environment import SAFE_ENV  # noqa: E402
from refit_core.planning.plan import plan_transfers  # noqa: E402

GIB = 1 << 30


def fp8_cases(gpus: int, sizes: tuple[str, ...], iters: dict[str, int], layers: int) -> list[Case]:
    """(bf16, fp8) pairs of rows, in order."""
    rows = [("config-4", "nvshmem"), ("collocated-4", "nvshmem"), ("world-1", "nccl")]
    if gpus >= 2:
        rows += [("tp1-to-tp1", "nccl"), ("tp2-to-tp1ep2-collocated", "nccl")]
    if gpus >= 3:
        rows += [("config-4", "nccl")]
    out = []
    for size in sizes:
        for name, method in rows:
            base = _case(name, method, size, iters[size], layers, gpus, True)
            for precision in ("bf16", "fp8"):
                cfg = base.config.with_changes(inference_precision=precision,
                                               name=base.config.name + ("-fp8" if precision == "fp8" else ""))
                out.append(Case(cfg, size, True, base.skip))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seed size only")
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations at the seed size")
    ap.add_argument("--large-iterations", type=int, default=5, help="timed iterations at the large size")
    ap.add_argument("--large-layers", type=int, default=None, help="layers of the large model (default 4 on 1 GPU, 8)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/DATE-GPU-fp8.json)")
    args = ap.parse_args(argv)
    os.environ.update(SAFE_ENV)
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 1:
        print("fp8_bench: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    t_start = time.time()
    sizes = ("seed",) if args.quick else ("seed", "large")
    layers = args.large_layers or (4 if gpus == 1 else 8)
    todo = fp8_cases(gpus, sizes, {"seed": args.iterations, "large": args.large_iterations}, layers)
    cap = min(4 * GIB, torch.cuda.get_device_properties(0).total_memory // 8)
    wanted = sorted({probe_size(traffic(plan_transfers(c.config.inventory(), c.config.world(),
                                                       precision=c.config.inference_precision), gpus).network_bytes_max
                                or GIB, cap) for c in todo if not c.skip})
    print(f"{device} x {gpus}; {len(todo)} rows", flush=True)
    work = Path(tempfile.mkdtemp(prefix="fp8-bench-"))
    by_size: dict[str, dict[str, float]] = {"local_copy": {str(s): local_copy(s, 10) for s in wanted}}
    if gpus >= 2:
        by_size["peer_copy_one_way"], by_size["peer_copy_both_ways"] = {}, {}
        for s in wanted:
            by_size["peer_copy_one_way"][str(s)], by_size["peer_copy_both_ways"][str(s)] = peer_copy(s, 10)
        by_size.update(nccl_ceilings(wanted, 10, work))
    path = args.out or Path(__file__).resolve().parent / "results" / f"{date}-{slug(device)}-fp8.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in todo:
        row = run_case(c, gpus, work, by_size)
        row["quantise_ms"] = (row.get("phases_ms") or {}).get("quantise")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "transport"}), flush=True)

        path.write_text(json.dumps({"device": device, "gpus": gpus, "date": date, "partial": True,
                                       "command": "python " + " ".join(sys.argv), "rows": rows}, indent=1))
    for bf16, fp8 in zip(rows[::2], rows[1::2]):
        if bf16.get("wire_bytes") and fp8.get("wire_bytes"):
            fp8["wire_vs_bf16"] = fp8["wire_bytes"] / bf16["wire_bytes"]
        if bf16.get("median_ms") and fp8.get("median_ms"):
            fp8["time_vs_bf16"] = fp8["median_ms"] / bf16["median_ms"]
    out = {"device": device, "gpus": gpus, "date": date, "command": "python " + " ".join(sys.argv),
           "env": {k: os.environ.get(k) for k in SAFE_ENV}, "ceilings_by_size": by_size, "rows": rows,
           "wall_s": round(time.time() - t_start, 1)}
    path.write_text(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {path} ({out['wall_s']} s)\n")
    print(table(rows))
    ran = [r for r in rows if not r.get("skipped")]
    return 0 if ran and all(r.get("verified") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
