"""BF16 and FP8 destinations side by side on this machine's GPUs (issues 17 and 22).

    python benchmarks/fp8_bench.py              # ~3 minutes on one H100/H200
    python benchmarks/fp8_bench.py --quick      # seed size only
    python benchmarks/fp8_bench.py --cpu-smoke  # no GPU: gloo on the CPU, a tiny model (checks the record)

Rows, each run twice (--rl-inference-precision bf16, then fp8) through the local launcher with
gpu_bench.py's machinery (ceilings measured in the same run, bounds, phases): on 1 GPU the NVSHMEM
rows config-4 and collocated-4 (PEs sharing the GPU) and NCCL's world-1 row; with 2+ GPUs also the
NCCL rows that fit one rank per GPU (config-4, tp1-to-tp1, tp2-to-tp1ep2-collocated); each at the
seed's size and at the large size. The same run measures the local copy ceiling and the fused
quantiser's two passes (gpu_bench.quantise_ceilings: `quantise_amax`, `quantise`, GB/s of BF16 read).

The record, benchmarks/results/DATE-GPU-fp8.json (GPU: h100, h200), per row: `config`, `precision`,
`size`, `median_ms`, `bound_ms` (the row's own bytes: FP8 bytes for FP8 rows), `ratio_to_bound`,
`phases_ms`, `extra_bytes_measured_max`; FP8 rows also `quantise_ms` (the median `quantise` phase:
CUDA events around the scale pass, and for one-sided methods the send image; a two-sided method
quantises each bucket inside its `pack` and `local` phases, overlapped with the wire, so that part
is in `phases_ms`, not here: `quantise_measured_as` says so), `quantise_bound_ms` (the issue's
HBM bound: the busiest GPU's quantised elements x 3 bytes over twice the local copy ceiling),
`quantise_model_ms` (the two passes at the measured quantiser ceilings), `bf16_median_ms` of the
twin row and `fp8_over_bf16`.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_bench import (Case, _case, gpu_of, measure_ceilings, pick, probe_size, run_case,  # noqa: E402
                                  slug, table, traffic)
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.environment import SAFE_ENV  # noqa: E402
from refit_core.planning.plan import Plan, plan_transfers  # noqa: E402
from refit_core.planning.timemodel import quantised_bytes  # noqa: E402

GIB = 1 << 30
TINY = {  # --cpu-smoke: the tests' small model (tests/conftest.py SMALL_FLAGS)
    "num_layers": 2, "hidden_size": 256, "num_attention_heads": 8, "ffn_hidden_size": 512,
    "num_experts": 8, "moe_shared_expert_intermediate_size": 256, "seq_length": 128,
    "max_position_embeddings": 128, "vocab_size": 1000,
}
HOW_QUANTISE_IS_MEASURED = {
    True: "CUDA events around the scale pass (block maxima, the all-reduce of cut blocks, scales); each bucket's "
          "quantisation runs inside the pack and local phases, overlapped with the wire",
    False: "CUDA events around the scale pass and the whole send image, before the one-sided copy",
}


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


def cpu_smoke_cases(iters: int) -> list[Case]:
    """--cpu-smoke: config-4 and collocated-4 over gloo, tiny model, bf16 then fp8."""
    out = []
    for name in ("config-4", "collocated-4"):
        base = _case(name, "gloo", "seed", iters, 2, 1, True)
        cfg = apply_overrides(base.config, TINY)
        cfg = cfg.with_changes(name=name + "-tiny", gpus=cfg.world().gpus_used)
        for precision in ("bf16", "fp8"):
            out.append(Case(cfg.with_changes(inference_precision=precision,
                                             name=cfg.name + ("-fp8" if precision == "fp8" else "")), "tiny"))
    return out


def quantise_bound_ms(plan: Plan, gpus: int, local_copy_gbps: float | None) -> float | None:
    """Issue 22's bound on the quantiser: the busiest GPU's quantised elements x 3 bytes (BF16 read,
    FP8 written) over twice the local copy ceiling (a copy reads and writes each byte)."""
    if not local_copy_gbps:
        return None
    held, _ = quantised_bytes(plan)
    per_gpu: dict[int, int] = {}
    for r, b in held.items():
        g = gpu_of(r, max(gpus, 1))
        per_gpu[g] = per_gpu.get(g, 0) + b // 2
    elements = max(per_gpu.values(), default=0)
    return elements * 3 / (2 * local_copy_gbps * 1e6)


def quantise_model_ms(plan: Plan, gpus: int, by_size: dict[str, dict[str, float]]) -> float | None:
    """The two passes at the quantiser ceilings measured in this run (busiest GPU, not overlapped)."""
    held, _ = quantised_bytes(plan)
    amax, quant = by_size.get("quantise_amax", {}), by_size.get("quantise", {})
    per_gpu: dict[int, int] = {}
    for r, b in held.items():
        g = gpu_of(r, max(gpus, 1))
        per_gpu[g] = per_gpu.get(g, 0) + b
    read = max(per_gpu.values(), default=0)
    a, q = pick(amax, read), pick(quant, read)
    return read / (a * 1e6) + read / (q * 1e6) if a and q and read else None


def pair_up(rows: list[dict[str, Any]], plans: list[Plan], gpus: int, by_size: dict[str, dict[str, float]],
            two_sided: list[bool]) -> None:
    """The record's FP8 fields, each FP8 row beside its BF16 twin (rows come in bf16, fp8 pairs)."""
    local = by_size.get("local_copy", {})
    for k in range(0, len(rows) - 1, 2):
        bf16, fp8, plan = rows[k], rows[k + 1], plans[k + 1]
        read = max(quantised_bytes(plan)[0].values(), default=0)
        fp8["quantise_bound_ms"] = quantise_bound_ms(plan, gpus, pick(local, read))
        fp8["quantise_model_ms"] = quantise_model_ms(plan, gpus, by_size)
        fp8["quantise_ms"] = (fp8.get("phases_ms") or {}).get("quantise")
        fp8["quantise_measured_as"] = HOW_QUANTISE_IS_MEASURED[two_sided[k + 1]]
        fp8["bf16_median_ms"] = bf16.get("median_ms")
        fp8["fp8_over_bf16"] = fp8["median_ms"] / bf16["median_ms"] \
            if bf16.get("median_ms") and fp8.get("median_ms") else None
        if bf16.get("wire_bytes") and fp8.get("wire_bytes"):
            fp8["wire_vs_bf16"] = fp8["wire_bytes"] / bf16["wire_bytes"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seed size only")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: gloo on the CPU, a tiny model, no ceilings")
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations at the seed size")
    ap.add_argument("--large-iterations", type=int, default=5, help="timed iterations at the large size")
    ap.add_argument("--large-layers", type=int, default=None, help="layers of the large model (default 4 on 1 GPU, 8)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/DATE-GPU-fp8.json)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    os.environ.update(SAFE_ENV)
    import torch

    from refit_core.planning import methods

    gpus = torch.cuda.device_count()
    if gpus < 1 and not args.cpu_smoke:
        print("fp8_bench: no CUDA GPU here; run it on a GPU machine (or --cpu-smoke)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if gpus else "cpu (gloo smoke)"
    date = datetime.date.today().isoformat()
    t_start = time.time()
    if args.cpu_smoke:
        todo = cpu_smoke_cases(min(args.iterations, 2))
    else:
        sizes = ("seed",) if args.quick else ("seed", "large")
        layers = args.large_layers or (4 if gpus == 1 else 8)
        todo = fp8_cases(gpus, sizes, {"seed": args.iterations, "large": args.large_iterations}, layers)
    plans = [plan_transfers(c.config.inventory(), c.config.world(), precision=c.config.run.inference_precision)
             for c in todo]
    work = Path(tempfile.mkdtemp(prefix="fp8-bench-"))
    by_size: dict[str, dict[str, float]] = {}
    if gpus:
        cap = min(4 * GIB, torch.cuda.get_device_properties(0).total_memory // 8)
        wanted = sorted({probe_size(traffic(p, gpus).network_bytes_max or GIB, cap)
                         for c, p in zip(todo, plans) if not c.skip})
        by_size = measure_ceilings(gpus, wanted, work)
    print(f"{device} x {gpus}; {len(todo)} rows", flush=True)
    path = args.out or Path(__file__).resolve().parent / "results" / f"{date}-{slug(device)}-fp8.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"device": device, "gpus": gpus, "date": date, "command": "python " + " ".join(sys.argv)}
    rows = []
    for c in todo:
        rows.append(run_case(c, max(gpus, 1), work, by_size))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "transport"}), flush=True)
        path.write_text(json.dumps({**head, "partial": True, "rows": rows}, indent=1))  # a run cut short keeps its rows
    pair_up(rows, plans, max(gpus, 1), by_size, [methods.method(c.config.run.method).two_sided for c in todo])
    out = {**head, "env": {k: os.environ.get(k) for k in SAFE_ENV}, "ceilings_by_size": by_size, "rows": rows,
           "wall_s": round(time.time() - t_start, 1)}
    path.write_text(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {path} ({out['wall_s']} s)\n")
    print(table(rows))
    ran = [r for r in rows if not r.get("skipped")]
    return 0 if ran and all(r.get("verified") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
