"""A run decided and planned once, before anything is submitted: what its files say about it.

`PreparedRun` holds one run's spec (orchestrator/submission/runspec.py), its plan and its memory fit, each
computed once: the run directory's plan.bin (what the ranks load), plan.json (`plan_json`, what `plan --json`
prints and the views read) and run.json (`run_info`) are all written from it (orchestrator/state/rundir.py).
Pure: no file is touched here.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from orchestrator.submission.runspec import RunSpec
from refit_core.config import RunConfig
from refit_core.planning.devices import DeviceMap, assign_devices
from refit_core.planning.memory import MemoryFit
from refit_core.planning.plan import Plan
from refit_core.planning.timemodel import predict


@dataclass(frozen=True)
class PreparedRun:
    """One run: its spec, the plan its ranks load and the memory fit its views show, made once."""

    spec: RunSpec
    plan: Plan
    fit: MemoryFit

    @classmethod
    def of(cls, spec: RunSpec, plan: Plan | None = None) -> "PreparedRun":
        """Plan the spec's config (unless `plan` was made for it already) and fit it in memory."""
        cfg = spec.config
        plan = plan or cfg.plan()
        return cls(spec, plan, cfg.memory_fit(plan.inventory, plan.world))

    def summary(self) -> dict[str, Any]:
        return plan_json(self.spec.config, self.plan, self.spec.devices, fit=self.fit)


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def memory_json(fit: MemoryFit) -> dict[str, Any]:
    b = fit.busiest
    return {
        "per_gpu_max_bytes": fit.max_bytes, "limit_bytes": fit.limit_bytes, "fits": fit.fits,
        "headroom_bytes": fit.headroom_bytes,
        "busiest": {"rank": b.rank, "role": b.role, "source_bytes": b.source_bytes,
                    "destination_bytes": b.destination_bytes, "buffer_bytes": b.buffer_bytes},
    }


def device_map(cfg: RunConfig, plan: Plan, local_gpus: int | None = None) -> DeviceMap:
    """The rank -> GPU placement `refitctl plan` shows: of a local run on `local_gpus` GPUs if given, else the one
    it gets on SLURM nodes of --gpus-per-node GPUs with the default tasks per node (a submitted run's is its
    spec's, decided by make_spec)."""
    if local_gpus is not None:
        return assign_devices(plan.world, cfg.run.method, plan.world.world_size, local_gpus)
    per_node = min(plan.world.world_size, cfg.hardware.gpus_per_node)
    return assign_devices(plan.world, cfg.run.method, per_node, cfg.hardware.gpus_per_node)


def plan_json(cfg: RunConfig, plan: Plan, gpus: DeviceMap | None = None, fit: MemoryFit | None = None) -> dict[str, Any]:
    """plan.json: the plan as `refitctl plan --json` prints it and the views read it (`fit`: the memory fit
    already made for this plan, else it is made here)."""
    w = plan.world
    inv = plan.inventory
    fit = fit or cfg.memory_fit(inv, w)
    pred = predict(plan, cfg.link_model())
    return {
        "config": cfg.name,
        "mode": w.mode.value,
        "method": cfg.run.method,
        "nvshmem": {"placement": cfg.run.nvshmem_placement, "sync": cfg.run.nvshmem_sync},
        "world_size": w.world_size,
        "gpus_used": w.gpus_used,
        "source_ranks": list(w.source.ranks),
        "destination_ranks": list(w.destination.ranks),
        "idle_ranks": list(w.idle_ranks),
        "gpus": (gpus or device_map(cfg, plan)).to_json(),
        "source_layout": {"tp": w.source.layout.tp, "ep": w.source.layout.ep, "pp": w.source.layout.pp},
        "destination_layout": {"tp": w.destination.layout.tp, "ep": w.destination.layout.ep,
                               "pp": w.destination.layout.pp},
        "model": {"parameters": inv.numel, "bytes": inv.nbytes, "expert_bytes": inv.expert_nbytes,
                  "tensors": len(inv.params), "dtype": inv.spec.dtype},
        "precision": {"destination": plan.precision,
                      "destination_bytes": (plan.destination or inv).nbytes,
                      "gathers": [{"param": plan.params[g.param].name, "start": g.start, "length": g.length,
                                   "parts": [list(h) for h in g.parts]} for g in plan.gathers]},
        "transfers": len(plan.transfers),
        "network_bytes": plan.network_bytes,
        "local_bytes": plan.local_bytes,
        "relay": cfg.run.relay,
        "relayed_bytes": plan.relayed_bytes,
        "balance": {"max_source_bytes": plan.max_source_bytes, "bound_bytes": plan.balance_bound,
                    "ratio": plan.balance, "node_aware": plan.nodes is not None,
                    "by_link": {c: {"max_source_bytes": m, "bound_bytes": b}
                                for c, (m, b) in plan.class_balance.items()} if plan.class_bounds else {}},
        "predicted": pred.to_json(),
        "memory": memory_json(fit),
        "pairs": [{"src": s, "dst": d, "bytes": b, "local": s == d} for (s, d), b in plan.pair_bytes.items()],
        "per_rank": {str(r): {"bytes_in": v.bytes_in, "bytes_out": v.bytes_out, "bytes_local": v.bytes_local,
                              "intra_node_in": g.intra_in, "intra_node_out": g.intra_out,
                              "inter_node_in": g.inter_in, "inter_node_out": g.inter_out,
                              "memory_bytes": m.total}
                     for (r, v), g, m in zip(plan.per_rank.items(), pred.loads, fit.per_rank)},
    }


def run_info(spec: RunSpec, plan: Plan, command: str, run_dir: str) -> dict[str, Any]:
    """run.json's content before submission (pure)."""
    cfg = spec.config
    return {
        "version": 1, "name": spec.name, "config": cfg.name, "run_dir": run_dir,
        "created": now_iso(), "command": command, "spec": spec.to_json(),
        "world_size": cfg.hardware.gpus, "active_ranks": plan.world.gpus_used, "delivered_bytes": plan.delivered_bytes,
        "precision": plan.precision, "wire_bytes": plan.network_bytes,
        "iterations": cfg.run.iterations, "warmup": cfg.run.warmup, "mode": cfg.layouts.mode.value,
        "source": {"tp": cfg.layouts.source.tp, "ep": cfg.layouts.source.ep, "pp": cfg.layouts.source.pp},
        "destination": {"tp": cfg.layouts.destination.tp, "ep": cfg.layouts.destination.ep, "pp": cfg.layouts.destination.pp},
        "job": None, "final": None,
    }


