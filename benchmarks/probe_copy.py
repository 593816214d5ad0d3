"""Shared-GPU copy ceiling: N NVSHMEM PEs each copy their share of S bytes into the next PE's
symmetric buffer at once, timed barrier to barrier exactly like an NVSHMEM refit iteration (the
same completion: REFITCTL_NVSHMEM_SYNC, host barrier when PEs share a GPU).

Run by benchmarks/refit_bench.py as N local processes: `python -m benchmarks.probe_copy RUN_DIR`,
RUN_DIR/probe.json holding {"bytes": S, "iterations": K, "warmup": W}. Each rank writes
RUN_DIR/probe-rank-N.json with its per-iteration milliseconds.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refit_core.environment import SAFE_ENV, task_env  # noqa: E402
from refit_core.execution.transports.nvshmem import init_nvshmem, sync_mode  # noqa: E402


def main(run_dir: Path) -> None:
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    spec = json.loads((run_dir / "probe.json").read_text())
    env = task_env()
    n, r = env.world_size, env.rank
    dev = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group("gloo", rank=r, world_size=n, timeout=datetime.timedelta(minutes=10),
                            init_method=f"tcp://{env.master_addr}:{env.master_port}")
    share = spec["bytes"] // n // 256 * 256
    os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(2 * share + (512 << 20)))
    init_nvshmem(r, n, dev, dist.group.WORLD)
    import nvshmem.core as nv

    src = nv.bytetensor((share,))
    dst = nv.bytetensor((share,))
    src.copy_(torch.randint(0, 256, (share,), dtype=torch.uint8, device=dev))
    peer = nv.get_peer_tensor(dst, (r + 1) % n)
    stream = torch.cuda.current_stream(dev)
    times = []
    host = sync_mode(os.environ.get("REFITCTL_NVSHMEM_SYNC", "auto"), n) == "host"  # the same completion the refit uses (transports/nvshmem.py)
    for k in range(spec["warmup"] + spec["iterations"]):
        dist.barrier()
        if host:
            t0 = time.perf_counter()
            peer.copy_(src)
            stream.synchronize()
            dist.barrier()
            ms = (time.perf_counter() - t0) * 1e3
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            nv.barrier_all(stream=stream)
            peer.copy_(src)
            nv.barrier_all(stream=stream)
            b.record(stream)
            b.synchronize()
            ms = a.elapsed_time(b)
        if k >= spec["warmup"]:
            times.append(ms)
    dist.barrier()
    ok = bool(torch.equal(dst, nv.get_peer_tensor(src, (r - 1) % n)))
    (run_dir / f"probe-rank-{r}.json").write_text(json.dumps({"rank": r, "times_ms": times, "verified": ok,
                                                             "sync": "host" if host else "device"}))
    dist.barrier()
    nv.free_tensor(src)
    nv.free_tensor(dst)
    nv.finalize()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
