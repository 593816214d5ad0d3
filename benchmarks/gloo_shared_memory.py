"""gloo through shared memory against gloo's sockets, alternating in one run, against this host's copy rate.

refitctl's gloo ranks all on one host stage every byte through /dev/shm (refit_core/execution/transports/
shared.py) or read their senders' shards directly (cma.py) unless `--gloo-shared-memory off`. This runs each
config as a refitctl run (jobs/local.py, one process per rank, synthetic shards, every byte verified) with each
mode in turn (read, staged, off; A B C A B C), so the machine's load hits all alike, and reports per config the
median of the per-round speedups over the sockets with their spread. The ceiling: a read copies every byte that
crosses ranks once, staging twice, a local byte once; at this host's memory copy rate (torch, all cores, the
best of 7, measured in the same run) that takes a bound, and `<mode>_of_bound` is bound / median.

    python benchmarks/gloo_shared_memory.py [--configs config-1,...] [--modes read,staged,off] [--rounds 3]

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


def one_run(cfg: RunConfig) -> float:
    """One refitctl run of `cfg`; its median iteration (ms), after checking the path the ranks report."""
    with tempfile.TemporaryDirectory() as d:
        codes, res = run_locally(cfg, Path(d), timeout_s=600)
        info = {k: v for f in rank_files(Path(d)) for k, v in (load_rank_record(f).transport or {}).items()}
    if codes != [0] * cfg.hardware.gpus or not res.get("verified"):
        raise SystemExit(f"{cfg.name}: the run failed (exit codes {codes})")
    mode = cfg.run.gloo_shared_memory
    want = {"off": (False, None), "staged": (True, False), "read": (True, True)}[mode]
    if (info.get("shared_memory"), info.get("cross_memory") if mode != "off" else None) != want:
        raise SystemExit(f"{cfg.name}: --gloo-shared-memory {mode} but the ranks report {info}")
    return res["median_ms"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="config-1,config-4,config-6,collocated-1,collocated-2")
    ap.add_argument("--modes", default="read,staged,off", help="--gloo-shared-memory values, run in turn each round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    out = args.out or ROOT / "benchmarks" / "results" / f"{datetime.date.today().isoformat()}-cpu-gloo-shared-memory.json"
    doc: dict[str, Any] = {"device": f"cpu ({os.cpu_count()} cores)", "command": " ".join([sys.executable, *sys.argv]),
                           "model_flags": REDUCED, "load_before": os.getloadavg(), "copy_gbps": round(copy_gbps(), 2),
                           "schedule": f"{args.rounds} rounds of ({', '.join(modes)}), each a refitctl run of "
                                       f"{args.iterations} timed iterations; a run's time: its median", "rows": []}
    for name in args.configs.split(","):
        cfg = row_config(name, args.iterations)
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                times[m].append(one_run(cfg.with_changes(gloo_shared_memory=m)))
        plan = cfg.plan()
        row = {"config": name, "ranks": cfg.hardware.gpus,
               "delivered_bytes": sum(t.bytes_in + t.bytes_local for t in plan.per_rank.values()),
               "max_bytes_in": max(t.bytes_in for t in plan.per_rank.values()),
               "times_ms": times, "median_ms": {m: round(statistics.median(v), 3) for m, v in times.items()}}
        if "off" in modes:  # per-round speedups over the sockets
            row["speedups"] = {m: [round(o / t, 3) for t, o in zip(v, times["off"])] for m, v in times.items() if m != "off"}
            row["speedup"] = {m: round(statistics.median(v), 3) for m, v in row["speedups"].items()}
        # ceiling: a read copies each received byte once, staging twice; a local byte once; all on this host's cores
        for m, copies in (("read", 1), ("staged", 2)):
            if m in times:
                bound = sum(copies * t.bytes_in + t.bytes_local for t in plan.per_rank.values()) / doc["copy_gbps"] / 1e6
                row[f"{m}_of_bound"] = round(bound / statistics.median(times[m]), 3)
        doc["rows"].append(row)
        print(json.dumps({k: row[k] for k in row if k != "times_ms"}), flush=True)
    doc["load_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print("| row | ranks | MB delivered | " + " | ".join(f"{m} ms" for m in modes) + " | "
          + " | ".join(f"{m} x sockets" for m in modes if m != "off") + " |")
    for r in doc["rows"]:
        print(f"| {r['config']} | {r['ranks']} | {r['delivered_bytes'] / 1e6:.1f} | "
              + " | ".join(str(r["median_ms"][m]) for m in modes) + " | "
              + " | ".join(f"{r['speedup'][m]} ({min(r['speedups'][m])}-{max(r['speedups'][m])})"
                           for m in modes if m != "off" and "speedup" in r) + " |")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
