"""Can this SLURM cluster ever run the job? Asked of `sinfo` before anything is submitted.

sbatch refuses some impossible requests at once (more GPUs per node than any node has) but
queues others for ever (`PENDING (PartitionConfig)`: more nodes than the partition holds, a time
limit above the partition's). Comparing the request with what `sinfo` reports turns both into
one line before submission, and lets `--cluster auto` run a job that fits this machine locally
instead. Parsing and the comparison are pure; only `query_nodes` runs a command.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from orchestrator.submission.runspec import parse_time
from refit_core.errors import ConfigError

SINFO_FORMAT = "%N|%P|%c|%G|%l|%a|%t"


@dataclass(frozen=True)
class NodeInfo:
    """One node of one partition, as `sinfo -N` lists it."""

    name: str
    partition: str
    default: bool  # the partition is the cluster's default ('*' after its name)
    cpus: int
    gpus: int
    time_limit_s: int | None  # None: no limit
    partition_up: bool
    usable: bool  # not down, drained or failed


@dataclass(frozen=True)
class Request:
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    time_limit_s: int
    partition: str | None  # None: the default partition


def parse_time_limit(text: str) -> int | None:
    """sinfo's %l in seconds ('infinite' and the like: None, no limit); the syntax is SLURM's time
    syntax, which runspec.parse_time reads for --time. A limit it refuses reads as no limit."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    try:
        return parse_time(text)
    except ConfigError:
        return None


def _gpus(gres: str) -> int:
    """GPUs in a GRES string such as 'gpu:4', 'gpu:h100:8(S:0-1)', 'gpu:a100:4,shard:8'."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def parse_sinfo(text: str) -> list[NodeInfo]:
    out = []
    for line in text.splitlines():
        f = line.strip().split("|")
        if len(f) != 7:
            continue
        name, part, cpus, gres, limit, avail, state = f
        try:
            out.append(NodeInfo(name, part.rstrip("*"), part.endswith("*"), int(cpus), _gpus(gres),
                                parse_time_limit(limit), avail == "up",
                                not re.match(r"(down|drain|fail|inval|maint|futr|unk)", state.rstrip("*~#$@+-"))))
        except ValueError:
            continue
    return out


def query_nodes(timeout_s: float = 15) -> list[NodeInfo] | None:
    """What `sinfo` reports now; None if it cannot be asked."""
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(p.stdout) if p.returncode == 0 else None


def misfit(req: Request, nodes: list[NodeInfo]) -> str | None:
    """Why the cluster can never run `req` (one clause, naming what is missing), or None if it can."""
    if req.partition is None:
        names = sorted({n.partition for n in nodes if n.default})
        if not names:
            return "the cluster has no default partition: pass --partition"
        part = names[0]
    else:
        part = req.partition
    members = [n for n in nodes if n.partition == part]
    if not members:
        known = ", ".join(sorted({n.partition for n in nodes})) or "none"
        return f"partition {part!r} does not exist (partitions: {known})"
    if not any(n.partition_up for n in members):
        return f"partition {part!r} is not up"
    cpus = req.tasks_per_node * req.cpus_per_task
    fitting = [n for n in members if n.usable and n.cpus >= cpus and n.gpus >= req.gpus_per_node]
    if len(fitting) < req.nodes:
        most_gpus = max((n.gpus for n in members), default=0)
        most_cpus = max((n.cpus for n in members), default=0)
        what = []
        if req.gpus_per_node > most_gpus:
            what.append(f"{req.gpus_per_node} GPUs per node (its nodes have at most {most_gpus})")
        if cpus > most_cpus:
            what.append(f"{cpus} CPUs per node for {req.tasks_per_node} tasks (its nodes have at most {most_cpus})")
        if not what:
            what.append(f"{req.nodes} node{'s' if req.nodes > 1 else ''} with {req.gpus_per_node} GPUs and "
                        f"{cpus} CPUs each (it has {len(fitting)} usable)")
        return f"partition {part!r} cannot hold {' and '.join(what)}"
    limits = [n.time_limit_s for n in members if n.time_limit_s is not None]
    if limits and req.time_limit_s > max(limits):
        return (f"time limit {req.time_limit_s // 60} min exceeds partition {part!r}'s "
                f"{max(limits) // 60} min: pass a shorter --time")
    return None
