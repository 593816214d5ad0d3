"""NCCL send/recv ceiling between GPU 0 and GPU 1: one way, and both ways at once.

Run by benchmarks/gpu_bench.py as 2 local processes (jobs/local.py launch):
`python -m benchmarks.nccl_probe RUN_DIR`, RUN_DIR/probe.json holding {"sizes": [bytes, ...],
"iterations": K}. Each size is timed like nccl-tests: K transfers back to back between two CUDA
events, after a barrier, so the ranks' skew at the start is spread over K; the slower rank's time
counts. Rank 0 writes
RUN_DIR/nccl-probe.json: {"one_way": {size: GB/s}, "both_ways": {size: GB/s each way}}.
NVLink multicast stays off (SAFE_ENV) in both processes.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refit_core.environment import SAFE_ENV, task_env  # noqa: E402


def _time(ops: list[tuple], iters: int) -> float:
    """Milliseconds per round of `ops` (P2POp arguments), over `iters` rounds after 2 warm-ups."""
    def once() -> None:
        for w in dist.batch_isend_irecv([dist.P2POp(*op) for op in ops]):
            w.wait()

    for _ in range(2):
        once()
    torch.cuda.synchronize()
    dist.barrier()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        once()
    b.record()
    b.synchronize()
    t = torch.tensor([a.elapsed_time(b) / iters], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slower end's view: a transfer ends when both ends are done
    return float(t.item())


def main(run_dir: Path) -> None:
    os.environ.update(SAFE_ENV)
    spec = json.loads((run_dir / "probe.json").read_text())
    env = task_env()
    r = env.rank
    dev = torch.device("cuda", r)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=r, world_size=2, timeout=datetime.timedelta(minutes=5),
                            init_method=f"tcp://{env.master_addr}:{env.master_port}", device_id=dev)
    peer = 1 - r
    out: dict[str, dict[str, float]] = {"one_way": {}, "both_ways": {}}
    for size in spec["sizes"]:
        send = torch.ones(size, dtype=torch.uint8, device=dev)
        recv = torch.empty(size, dtype=torch.uint8, device=dev)
        one = [(dist.isend, send, 1)] if r == 0 else [(dist.irecv, recv, 0)]
        ms = _time(one, spec["iterations"])
        out["one_way"][str(size)] = size / (ms * 1e6)
        ms = _time([(dist.isend, send, peer), (dist.irecv, recv, peer)], spec["iterations"])
        out["both_ways"][str(size)] = size / (ms * 1e6)
        ok = bool(torch.all(recv == 1).item())
        if not ok:
            raise RuntimeError(f"NCCL probe: rank {r} received wrong bytes at size {size}")
        del send, recv
        torch.cuda.empty_cache()
    if r == 0:
        (run_dir / "nccl-probe.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
