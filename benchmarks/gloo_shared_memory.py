"""gloo through shared memory against gloo's sockets, alternating in one run, against this host's copy rate.

refitctl's gloo ranks all on one host stage every byte through /dev/shm (refit_core/execution/transports/
shared.py) unless `--gloo-shared-memory off`. This runs each config as a refitctl run (jobs/local.py, one
process per rank, synthetic shards, every byte verified) with the setting on and off in turn, A B A B, so the
machine's load hits both alike, and reports per config the median of the per-round speedups (socket median /
shared median) with their spread. The ceiling: the shared path copies every byte that crosses ranks twice
(pack, unpack) and a local byte once; at this host's memory copy rate (torch, all cores, measured in the same
run) that takes `bound_ms`, and `of_bound` is bound / median.

    python benchmarks/gloo_shared_memory.py [--configs config-1,config-4,config-6,collocated-1] [--rounds 3]

Writes benchmarks/results/<date>-cpu-gloo-shared-memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.local import run_locally  # noqa: E402
from orchestrator.configs import resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from refit_core.config import RunConfig  # noqa: E402
from refit_core.records import load_rank_record, rank_files  # noqa: E402

REDUCED = {"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8, "ffn_hidden_size": 1024, "num_experts": 8,
           "moe_shared_expert_intermediate_size": 512, "seq_length": 128, "max_position_embeddings": 128,
           "vocab_size": 1000}


def row_config(name: str, iterations: int) -> RunConfig:
    cfg = apply_overrides(resolve(name), {**REDUCED, "refit_method": "gloo", "num_benchmark_iterations": iterations})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    cfg.validate(gpu_memory=False)
    return cfg


def copy_gbps() -> float:
    """This host's memory copy rate, GB/s delivered (torch on every core, 256 MiB, the best of 7)."""
    import torch

    a = torch.ones(256 << 20, dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return a.numel() / min(times) / 1e9


def one_run(cfg: RunConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        codes, res = run_locally(cfg, Path(d), timeout_s=600)
        info = {k: v for f in rank_files(Path(d)) for k, v in (load_rank_record(f).transport or {}).items()}
    if codes != [0] * cfg.hardware.gpus or not res.get("verified"):
        raise SystemExit(f"{cfg.name}: the run failed (exit codes {codes})")
    if info.get("shared_memory") is not cfg.run.gloo_shared_memory:
        raise SystemExit(f"{cfg.name}: --gloo-shared-memory {cfg.run.gloo_shared_memory} but the ranks report "
                         f"shared_memory={info.get('shared_memory')}")
    return {"median_ms": res["median_ms"], "shared_memory": info.get("shared_memory")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="config-1,config-4,config-6,collocated-1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / f"{datetime.date.today().isoformat()}-cpu-gloo-shared-memory.json"
    doc: dict[str, Any] = {"device": f"cpu ({os.cpu_count()} cores)", "command": " ".join([sys.executable, *sys.argv]),
                           "model_flags": REDUCED, "load_before": os.getloadavg(), "copy_gbps": round(copy_gbps(), 2),
                           "schedule": f"{args.rounds} rounds of (shared memory on, off), each a run of "
                                       f"{args.iterations} timed iterations; a run's time: its median", "rows": []}
    for name in args.configs.split(","):
        cfg = row_config(name, args.iterations)
        on, off = [], []
        for _ in range(args.rounds):
            on.append(one_run(cfg.with_changes(gloo_shared_memory=True))["median_ms"])
            off.append(one_run(cfg.with_changes(gloo_shared_memory=False))["median_ms"])
        plan = cfg.plan()
        copied = sum(2 * t.bytes_in + t.bytes_local for t in plan.per_rank.values())
        bound = copied / doc["copy_gbps"] / 1e6
        speedups = [b / a for a, b in zip(on, off)]
        row = {"config": name, "ranks": cfg.hardware.gpus, "delivered_bytes": sum(t.bytes_in + t.bytes_local
                                                                          for t in plan.per_rank.values()),
               "shared_ms": on, "socket_ms": off, "speedups": [round(x, 3) for x in speedups],
               "speedup": round(statistics.median(speedups), 3), "spread": [round(min(speedups), 3),
                                                                           round(max(speedups), 3)],
               "bound_ms": round(bound, 3), "of_bound": round(bound / statistics.median(on), 3)}
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
    doc["load_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print("| row | ranks | MB delivered | shared ms (median) | sockets ms (median) | speedup (median of rounds) | spread "
          "| bound ms | of bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in doc["rows"]:
        print(f"| {r['config']} | {r['ranks']} | {r['delivered_bytes'] / 1e6:.1f} | {statistics.median(r['shared_ms']):.1f} | "
              f"{statistics.median(r['socket_ms']):.1f} | {r['speedup']} | {r['spread'][0]}-{r['spread'][1]} | "
              f"{r['bound_ms']} | {r['of_bound']} |")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
