"""Run named configs through the job entry point on this machine and print a table (plus JSON).

    python benchmarks/run_configs.py --configs config-1,config-4 --method nvshmem --out results.json

Each config runs as one local process per rank (jobs/local.py); on a one-GPU machine all ranks
share GPU 0 (NVSHMEM allows it, NCCL does not). Flags after `--` override every config
(seed flag names, e.g. `-- --num-layers 8`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.local import launch  # noqa: E402
from orchestrator.configs import resolve  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402


def _overrides(tokens: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i].lstrip("-").replace("-", "_")
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[key] = tokens[i + 1]
            i += 2
        else:
            out[key] = True
            i += 1
    return out


def run_config(name: str, method: str | None, overrides: dict[str, object], keep_idle: bool,
               workdir: Path, env: dict[str, str] | None = None, timeout_s: float = 600) -> dict[str, object]:
    cfg = resolve(name)
    if method:
        cfg = cfg.with_changes(method=method)
    cfg = apply_overrides(cfg, overrides)
    if not keep_idle:
        cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    cfg.validate()
    run_dir = workdir / f"{name}-{cfg.run.method}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json()))
    t0 = time.monotonic()
    codes = launch(run_dir, cfg.hardware.gpus, timeout_s=timeout_s, extra_env=env)
    wall = time.monotonic() - t0
    res_path = run_dir / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    if any(codes):
        tail = ""
        for log in sorted((run_dir / "logs").glob("rank-*.log")):
            text = log.read_text()
            if "Error" in text or "error" in text:
                tail = f"{log.name}: " + text[-1500:]
                break
        res.setdefault("errors", {})["launcher"] = f"exit codes {codes}; {tail}"
    plan_bytes = res.get("delivered_bytes")
    return {"config": name, "method": cfg.run.method, "pes": cfg.world().gpus_used, "world": cfg.hardware.gpus,
            "bytes": plan_bytes, "median_ms": res.get("median_ms"), "min_ms": res.get("min_ms"),
            "GBps": res.get("GBps"), "warmup_ms": res.get("warmup_ms"), "verified": res.get("verified", False),
            "launches": max((i.get("launches", 0) for i in res.get("iterations", [])), default=None),
            "extra_bytes_max": res.get("extra_bytes_max"), "wall_s": round(wall, 1), "errors": res.get("errors")}


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", required=True)
    ap.add_argument("--method")
    ap.add_argument("--keep-idle", action="store_true", help="launch idle ranks too (world = the config's gpus)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every rank (repeatable)")
    ap.add_argument("--repeat", type=int, default=1, help="run each config this many times")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for name in args.configs.split(","):
                row = run_config(name, args.method, _overrides(extra), args.keep_idle, Path(tmp) / str(rep), env=env)
                row["env"] = env
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'config':14} {'method':8} {'PEs':>3} {'bytes':>12} {'median ms':>10} {'min ms':>9} {'GB/s':>8} {'launch':>6} ok")
    for r in rows:
        f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{r['config']:14} {r['method']:8} {r['pes']:>3} {f(r['bytes'], '%d'):>12} {f(r['median_ms'], '%.3f'):>10} "
              f"{f(r['min_ms'], '%.3f'):>9} {f(r['GBps'], '%.1f'):>8} {f(r['launches'], '%d'):>6} {r['verified']}")
    if args.out:
        args.out.write_text(json.dumps({"host": os.uname().nodename, "rows": rows}, indent=1))
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
