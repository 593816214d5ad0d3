"""How long planning a Kimi K2 refit takes on a CPU, and how much memory it needs.

    .venv/bin/python benchmarks/plan_bench.py                      # kimi-k2
    .venv/bin/python benchmarks/plan_bench.py kimi-k2 kimi-k2-collocated --json

Each config is measured in its own process, so its peak RSS is its own. Steps timed: resolving
and validating the config (includes the memory fit), building the inventory, the whole plan
(`RunConfig.plan`, node-aware), one rank's share (`Plan.for_rank`, the slowest of the first source and the
first destination rank) and the time model. Goals on the 2-core dev machine: whole plan < 10 s,
one rank's share < 1 s, peak RSS < 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOALS = {"plan_s": 10.0, "for_rank_s": 1.0, "peak_rss_gib": 2.0}


def measure(name: str) -> dict[str, Any]:
    """Time each planning step of config `name` in this process."""
    from orchestrator.configs import resolve
    from refit_core.planning.timemodel import predict

    out: dict[str, Any] = {"config": name}
    t0 = time.perf_counter()
    cfg = resolve(name)
    cfg.validate()
    t1 = time.perf_counter()
    inv = cfg.inventory()
    world = cfg.world()
    t2 = time.perf_counter()
    plan = cfg.plan(inv, world)
    t3 = time.perf_counter()
    share_s = 0.0
    for rank in (world.source.first_rank, world.destination.first_rank):
        ts = time.perf_counter()
        share = plan.for_rank(rank)
        share_s = max(share_s, time.perf_counter() - ts)
        out[f"rank_{rank}_transfers"] = sum(map(len, share.sends.values())) + sum(map(len, share.recvs.values())) \
            + len(share.local)
    t4 = time.perf_counter()
    pred = predict(plan, cfg.link_model())
    t5 = time.perf_counter()
    out.update(
        world_size=world.world_size, tensors=len(inv.params), transfers=len(plan.transfers),
        validate_s=t1 - t0, inventory_s=t2 - t1, plan_s=t3 - t2, for_rank_s=share_s, predict_s=t5 - t4,
        predicted_time_s=pred.time_s, bound_s=pred.bound_s, balance=plan.balance,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20),
    )
    out["ok"] = all(out[k] < v for k, v in GOALS.items())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="*", default=["kimi-k2"])
    p.add_argument("--json", action="store_true", help="print one JSON object per config")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.in_process:
        print(json.dumps(measure(args.configs[0])))
        return 0
    ok = True
    for name in args.configs:
        run = subprocess.run([sys.executable, __file__, "--in-process", name], capture_output=True, text=True)
        if run.returncode:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        r = json.loads(run.stdout)
        ok &= r["ok"]
        if args.json:
            print(json.dumps(r))
            continue
        print(f"{r['config']}: {r['world_size']} ranks, {r['tensors']} tensors, {r['transfers']} transfers")
        print(f"  validate (incl. memory fit) {r['validate_s']:.2f} s, inventory {r['inventory_s']:.2f} s")
        print(f"  whole plan {r['plan_s']:.2f} s (goal < {GOALS['plan_s']:g} s), one rank's share "
              f"{r['for_rank_s'] * 1000:.0f} ms (goal < {GOALS['for_rank_s']:g} s), time model {r['predict_s']:.2f} s")
        print(f"  peak RSS {r['peak_rss_gib']:.2f} GiB (goal < {GOALS['peak_rss_gib']:g} GiB); "
              f"predicted refit {r['predicted_time_s']:.3f} s (bound {r['bound_s']:.3f} s); "
              f"{'all goals met' if r['ok'] else 'GOAL MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
