"""The arguments several commands take (config, cluster, runs directory, watching), their argparse types,
and the `command` decorator every command module uses."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import safety
from orchestrator.configs.flags import add_flags
from orchestrator.submission.runspec import CLUSTERS, DEFAULT_TIME, FORWARD_NAMES, FORWARD_PREFIXES, parse_env
from refit_core.errors import ConfigError


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its one-line help, and `build`, which adds its arguments to a parser and returns
    its runner. orchestrator/cli.py lists every command module; nothing registers itself on import."""

    name: str
    help: str
    build: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]], Command]:
    """Make the decorated builder a `Command` (listed in its module's COMMANDS)."""

    def wrap(fn: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]) -> Command:
        return Command(name, help, fn)

    return wrap


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a named config (refitctl list), or none with seed flags")
    p.add_argument("--config-file", type=config_file, help="TOML file with [configs.NAME] tables")
    p.add_argument("--ceilings", type=Path, metavar="FILE", default=None,
                   help="link figures measured on this machine (the JSON benchmarks/gpu_bench.py writes) for the "
                        "predicted time and bound; flags such as --intra-node-gbps still win (env REFITCTL_CEILINGS)")
    add_flags(p)


def config_file(text: str) -> Path:
    """argparse type of --config-file: a path without control characters (configs.load_user_configs reads it)."""
    return safety.path_text("--config-file", text)


def output_path(flag: str, parents: bool = False) -> Callable[[str], Path]:
    """argparse type of a file refitctl writes: its folder exists (or, with `parents`, can be made), it is
    not a folder."""
    return lambda text: safety.output_file(flag, text, parents)


_OPTION_KEYS = ("cluster", "nodes", "tasks_per_node", "cpus_per_task", "request_gpus", "partition", "account", "qos",
                "time", "exclusive", "job_name", "sbatch_args", "srun_args", "env")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where and how to run (SLURM options apply with --cluster slurm; "
                             "--gpus-per-node, a seed flag, also sets the GPUs requested per node)")
    g.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="auto: SLURM if sbatch is found and SLURM answers, else local processes (default; "
                        "env REFITCTL_CLUSTER)")
    g.add_argument("--nodes", type=int, help="nodes (default: world size / tasks per node)")
    g.add_argument("--tasks-per-node", type=int, help="tasks per node (default: min(world size, GPUs per node))")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per task (sets OMP_NUM_THREADS too)")
    g.add_argument("--no-gpu-request", dest="request_gpus", action="store_false", default=None,
                   help="do not request GPUs from SLURM (CPU-only nodes; GPU methods then fall back to gloo)")
    g.add_argument("--partition", help="SLURM partition (env REFITCTL_PARTITION)")
    g.add_argument("--account", help="SLURM account (env REFITCTL_ACCOUNT)")
    g.add_argument("--qos", help="SLURM quality of service (env REFITCTL_QOS)")
    g.add_argument("--time", help=f"time limit, SLURM syntax: M, M:S, H:M:S, D-H:M (default {DEFAULT_TIME} minutes; "
                                  "env REFITCTL_TIME); local runs are stopped at it too")
    g.add_argument("--exclusive", action="store_true", default=None, help="ask for whole nodes (sbatch --exclusive)")
    g.add_argument("--job-name", help="SLURM job name (default refit-CONFIG)")
    g.add_argument("--sbatch-arg", dest="sbatch_args", action="append", metavar="ARG",
                   help="extra sbatch option, repeatable: --sbatch-arg=--constraint=h100")
    g.add_argument("--srun-arg", dest="srun_args", action="append", metavar="ARG",
                   help="extra srun option, repeatable: --srun-arg=--cpu-bind=none")
    g.add_argument("--env", action="append", metavar="KEY=VALUE", help=env_help())


def env_help() -> str:
    """--env's help, made from what `runspec.job_env` carries, so the two never disagree."""
    prefixes = ", ".join(p + "*" if p.endswith("_") else p for p in FORWARD_PREFIXES)
    return (f"environment variable for every task, repeatable; carried from your environment already: {prefixes} "
            f"and, of refitctl's own, only {', '.join(FORWARD_NAMES)} (no other REFITCTL_* variable)")


def add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None,
                   help="where run directories live (default ./runs; env REFITCTL_RUNS_DIR)")


MAX_POLL_S = 3600.0


def run_target(text: str) -> str:
    """argparse type of a RUN argument (a path, a name or a prefix): checked like any path, kept as text."""
    safety.path_text("RUN", text)
    return text


def poll_arg(text: str) -> float:
    """argparse type of --poll: seconds, a number from 0.1 to 3600 (one message for every other value)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= MAX_POLL_S:  # NaN fails too
        raise ConfigError(f"--poll {text!r}: give seconds from 0.1 to {MAX_POLL_S:g}")
    return value


def add_watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detach", action="store_true", help="submit and return; follow later with refitctl status --watch")
    p.add_argument("--poll", type=poll_arg, default=None,
                   help="seconds between status checks, 0.1 to 3600 (default 1 local, 3 SLURM)")


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster options the user gave on this command line (nothing for those left out)."""
    out: dict[str, Any] = {}
    for key in _OPTION_KEYS:
        v = getattr(args, key, None)
        if v is None:
            continue
        if key in ("sbatch_args", "srun_args"):
            v = tuple(v)
        elif key == "env":
            v = parse_env(v)
        out[key] = v
    return out
