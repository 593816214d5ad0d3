"""Run a function on N forked CPU processes under one gloo process group: a world on one machine; and the
synthetic shards such a world refits.

For examples, tests and benchmarks of the library on CPU (docs/library.md). Forking after the
parent imported what the ranks need (torch, megatron-core) costs one import, not one per rank.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from typing import TYPE_CHECKING, Any, Callable

import torch

from refit_core.environment import free_port

if TYPE_CHECKING:
    from refit_core.config import RunConfig


def _rank_main(rank: int, world: int, port: int, backend: str, fn: Callable[..., Any], args: tuple, q: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if backend == "nccl":  # one rank per GPU
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
        result = fn(*args)
        dist.barrier()
        q.put((rank, True, result))
    except BaseException:  # reported to the parent, which raises it
        q.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local(world: int, fn: Callable[..., Any], *args: Any, timeout_s: float = 300,
              backend: str = "gloo") -> list[Any]:
    """`fn(*args)` on `world` forked processes (rank = dist.get_rank()); their results by rank.
    `backend` "nccl" puts rank r on GPU r (the parent must not have initialised CUDA).
    Raises RuntimeError with the first failing rank's traceback, or naming the ranks that hung."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, backend, fn, args, q), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, tuple[bool, Any]] = {}
    try:
        for _ in range(world):
            try:
                rank, ok, res = q.get(timeout=timeout_s)
            except queue.Empty:
                break  # a rank hangs: reported below with the ranks that did answer
            results[rank] = (ok, res)
            if not ok:
                break
    finally:
        for p in procs:
            p.join(timeout=5 if len(results) == world else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    failed = sorted(r for r, (ok, _) in results.items() if not ok)
    if failed or len(results) < world:
        r = failed[0] if failed else None
        raise RuntimeError(f"rank {r} failed:\n{results[r][1]}" if r is not None else
                           f"only ranks {sorted(results)} of {world} reported")
    return [results[r][1] for r in range(world)]


def synthetic_shards(cfg: "RunConfig", role: str, values: bool = True,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor] | None:
    """This rank's `role` ("source" or "destination") shards by refitctl parameter name, as views of one buffer
    in refitctl's layout on `device`: refitctl's deterministic values (`values`) or NaN; None on a rank
    without the role. What tests, examples and benchmarks hand the library in place of a model's tensors."""
    import torch.distributed as dist

    from refit_core.execution import weights
    from refit_core.planning.storage import rank_storage

    place = cfg.world().source if role == "source" else cfg.world().destination
    local = place.local(dist.get_rank())
    if local is None:
        return None
    inv = cfg.inventory()
    st = rank_storage(inv, place.layout, local)
    buf = torch.empty(st.nbytes, dtype=torch.uint8, device=device)
    weights.fill(buf, st, inv) if values else weights.poison(buf)
    return {inv.params[s.param].name: weights.param_view(buf, s, inv.params[s.param].dtype) for s in st.slots}
