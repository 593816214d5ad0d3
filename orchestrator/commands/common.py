"""What the command modules share: the `command` decorator, the arguments several commands take (config,
cluster, runs directory, watching), resolving a config from them, deciding and submitting runs, following
them live, and printing. One module, imported by the command modules; it imports none of them."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from orchestrator import configs, safety
from orchestrator.configs.flags import add_flags, apply_overrides, overrides_from_args
from orchestrator.safety import styled
from orchestrator.state.rundir import STATE_FILE, update_run
from orchestrator.state.tracking import Snapshot
from orchestrator.submission import executor, slurm_fit
from orchestrator.submission.runspec import (CLUSTERS, DEFAULT_TIME, FORWARD_NAMES, FORWARD_PREFIXES, ClusterOptions,
                                             RunSpec, make_spec, parse_env)
from orchestrator.views.liveview import watch
from refit_core.config import RunConfig
from refit_core.errors import ConfigError, RunDirError
from refit_core.planning.ceilings import load_ceilings
from refit_core.planning.plan import Plan, plan_transfers


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


def wide_console() -> Console:
    """A console at least 120 columns wide, so tables stay readable when piped; it reads no markup in
    what it prints, so a user's name or path is shown as written (orchestrator/safety.py)."""
    return safety.console(120)


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


def resolve_config(args: argparse.Namespace, gpu_memory: bool = True) -> RunConfig:
    """The named config (or the default base for bare flags), with the flags applied and validated
    (`gpu_memory=False`: not yet against --gpu-memory-gb; `submit` checks memory once it knows where it runs)."""
    if args.config:
        cfg = configs.resolve(args.config, args.config_file)
    else:
        cfg = configs.config_from_table("custom", {}, configs.builtin_configs(), "command line")
    given = overrides_from_args(args)
    cfg = link_figures_from(apply_overrides(cfg, given), args, given).with_environment(os.environ)
    cfg.validate(gpu_memory)
    return cfg


LINK_KEYS = ("intra_node_gbps", "intra_node_both_gbps", "inter_node_gbps", "local_copy_gbps")


def link_figures_from(cfg: RunConfig, args: argparse.Namespace, given: dict[str, object]) -> RunConfig:
    """The config with the time model's figures from --ceilings (or REFITCTL_CEILINGS), flags
    winning, and a note of where they came from."""
    path = getattr(args, "ceilings", None) or (Path(os.environ["REFITCTL_CEILINGS"])
                                               if os.environ.get("REFITCTL_CEILINGS") else None)
    flags = [k for k in LINK_KEYS if k in given]
    if path is not None:
        cfg = cfg.with_ceilings(load_ceilings(path, cfg.method), keep=flags)
    if flags:
        named = ", ".join("--" + k.replace("_", "-") for k in flags)
        cfg = cfg.with_changes(link_source=f"{cfg.link_source}; flags {named}" if cfg.link_source
                               else f"flags {named}, defaults for the rest")
    return cfg


# Defaults a site can set once, in the environment, instead of on every command.
ENV_DEFAULTS = {"cluster": "REFITCTL_CLUSTER", "partition": "REFITCTL_PARTITION", "account": "REFITCTL_ACCOUNT",
                "qos": "REFITCTL_QOS", "time": "REFITCTL_TIME"}
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


def runs_root(args: argparse.Namespace) -> Path:
    """--runs-dir, else $REFITCTL_RUNS_DIR, else ./runs: checked (a file there is one line, not a traceback)."""
    if args.runs_dir is not None:
        return safety.directory("--runs-dir", args.runs_dir)
    if os.environ.get("REFITCTL_RUNS_DIR"):
        return safety.directory("REFITCTL_RUNS_DIR", os.environ["REFITCTL_RUNS_DIR"])
    return safety.directory("the runs directory", "runs")


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


def cluster_options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> ClusterOptions:
    env = {k: os.environ[v] for k, v in ENV_DEFAULTS.items() if os.environ.get(v)}
    merged = {**env, **(base or {}), **given_options(args)}
    return ClusterOptions.from_json(merged)


def command_line() -> str:
    return "refitctl " + shlex.join(sys.argv[1:])


def _spec(name: str, cfg: Any, opts: ClusterOptions, cluster: str, method_explicit: bool) -> RunSpec:
    node_gpus = executor.local_gpu_count() if cluster == "local" else None
    gpus = bool(node_gpus) if cluster == "local" else opts.request_gpus
    host = executor.host_memory() if cluster == "local" else None
    return make_spec(name, cfg, cluster, opts, os.environ, method_explicit, gpus, os.cpu_count() or 1, node_gpus,
                     host)


def plan_and_spec(name: str, cfg: Any, opts: ClusterOptions, cluster: str, method_explicit: bool) -> tuple[RunSpec, Plan]:
    """Decide the run for `cluster` as given (render: a script for some cluster, not this one)."""
    spec = _spec(name, cfg, opts, cluster, method_explicit)
    return spec, spec.config.plan()


def plan_where_it_fits(name: str, cfg: Any, opts: ClusterOptions, cluster: str,
                       method_explicit: bool) -> tuple[RunSpec, Plan]:
    """Decide a run that is about to be submitted. On SLURM, first ask `sinfo` whether the cluster can
    ever run it: if not, `--cluster slurm` stops here in one line, and `--cluster auto` runs it
    locally, saying why."""
    spec = _spec(name, cfg, opts, cluster, method_explicit)
    reason = slurm_misfit(spec) if cluster == "slurm" else None
    if reason is not None:
        if opts.cluster == "slurm":
            raise ConfigError(f"this SLURM cluster cannot run {name}: {reason}: choose a partition that can "
                              "(--partition, --gpus-per-node), or run it here with --cluster local")
        local = _spec(name, cfg, opts, "local", method_explicit)
        note = (f"SLURM here cannot run {name} ({reason}): running it as local processes instead "
                "(--cluster slurm insists on SLURM)")
        spec = dataclasses.replace(local, notes=(note, *local.notes))
    return spec, spec.config.plan()


def slurm_misfit(spec: RunSpec) -> str | None:
    """Why SLURM as `sinfo` reports it can never run `spec`, or None (also when sinfo cannot tell)."""
    nodes = slurm_fit.query_nodes()
    if not nodes:
        return None
    r, o = spec.resources, spec.options
    req = slurm_fit.Request(r.nodes, r.tasks_per_node, o.cpus_per_task or 1, r.gpus_per_node, r.time_limit_s,
                            o.partition)
    return slurm_fit.misfit(req, nodes)


def submit_runs(specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[executor.JobRef]:
    """Submit and record the job ids in each run.json.

    Ctrl-C is held back from the submission until the job ids are recorded (then it is raised, and
    the caller detaches): a job that started always has its run directory. A submission that fails
    removes the run directories whose job never started, and only those.
    """
    with interrupts_deferred():
        try:
            refs = executor.submit(specs, run_dirs, folder)
        except BaseException as e:
            for d in run_dirs:
                if not job_started(d):
                    shutil.rmtree(d, ignore_errors=True)
            if isinstance(e, OSError):
                raise RunDirError(folder, f"cannot be written ({e.strerror or e})",
                                  "free some space or point --runs-dir at a writable disk; nothing was submitted") \
                    from None
            raise
        record_jobs(run_dirs, refs)
    return refs


def record_jobs(run_dirs: Sequence[Path], refs: Sequence[executor.JobRef]) -> None:
    """Write each job id into its run.json. When that fails (a disk full right after the controller or
    sbatch started), a job refitctl cannot follow must not run on: it is withdrawn (the controller stopped,
    the SLURM job cancelled), the run directories removed, and the error says so (issue 25, item 1)."""
    try:
        for d, ref in zip(run_dirs, refs):
            update_run(d, job=ref.to_json())
    except (OSError, RunDirError) as e:
        gone = executor.withdraw(refs)
        for d in run_dirs:
            shutil.rmtree(d, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else (e.short() if isinstance(e, RunDirError)
                                                                        else str(e))
        raise RunDirError(run_dirs[0], f"cannot record its job ({why})",
                          f"{gone}; free some space and submit again") from None


def job_started(run_dir: Path) -> bool:
    """Whether any task or controller of the run's job has left a trace (then its directory must stay)."""
    return (run_dir / STATE_FILE).exists() or any((run_dir / "ranks").glob("rank-*")) \
        or any((run_dir / "logs").glob("rank-*"))


_deferring: list[bool] = []


@contextlib.contextmanager
def interrupts_deferred() -> Any:
    """SIGINT inside the block is remembered and raised as KeyboardInterrupt when the (outermost) block ends."""
    got: list[int] = []
    if _deferring:  # an outer block holds them already
        yield
        return
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread: signals cannot arrive here anyway
        yield
        return
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if got:
        raise KeyboardInterrupt


def poll_seconds(args: argparse.Namespace, cluster: str) -> float:
    return args.poll if args.poll else (1.0 if cluster == "local" else 3.0)


def detach_hint(console: Console, target: Path) -> None:
    console.print(styled("Reattach: [bold]refitctl status {t} --watch[/]   Cancel: [bold]refitctl cancel {t}[/]",
                         t=shlex.quote(str(target))), highlight=False, soft_wrap=True)


def follow(run_dirs: list[Path], console: Console, poll_s: float, title: str | None,
           target: Path) -> list[Snapshot] | None:
    """Watch until done; on Ctrl-C say how to reattach and cancel, and return None (the job runs on)."""
    try:
        return watch(run_dirs, console, poll_s, title)
    except KeyboardInterrupt:
        console.print(styled("\n[bold]Detached[/]: the job keeps running."), highlight=False)
        detach_hint(console, target)
        return None


def emit(text: str) -> None:
    """Write to stdout; a reader that stops early (`| head`) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
