"""One NVSHMEM refit per placement on this GPU: time, GB/s and the memory beyond the shards.

    python benchmarks/quick_nvshmem.py config-1 --large --placements auto,push

A quick look before the full benchmark (refit_bench.py); prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from refit_bench import config_for, refit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs")
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--placements", default="auto")
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quick-"))
    ok = True
    for name in args.configs.split(","):
        for placement in args.placements.split(","):
            cfg = config_for(name, "nvshmem", args.iterations, args.large).with_changes(nvshmem_placement=placement)
            r = refit(cfg, work, f"{cfg.name}-{placement}")
            ok &= bool(r.get("verified"))
            print(json.dumps({"config": cfg.name, "placement": placement, **r}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
