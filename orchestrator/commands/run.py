"""`refitctl submit / status / results / cancel / runs` (and, through imports, `sweep` and `render`).

submit: config -> RunSpec (validated, layout printed) -> run directory -> executor -> live status
-> final table; exit code 0 only when the run verified. Ctrl-C detaches: the job keeps running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.submission import executor, slurm_fit
from orchestrator import safety
from orchestrator.cli import add_config_args, command, resolve_config, wide_console
from orchestrator.state.jobstate import cancel
from orchestrator.views.liveview import (comparison_view, method_label, results_view, run_header, run_view, state_style,
                                   sweep_table, watch)
from orchestrator.views.planview import human_bytes
from orchestrator.state.rundir import (STATE_FILE, find_run, is_sweep, iterations_csv, list_runs, load_run, stamp,
                                 unique_dir, update_run, write_run)
from orchestrator.submission.runspec import CLUSTERS, DEFAULT_TIME, ClusterOptions, RunSpec, make_spec, parse_env
from orchestrator.safety import styled
from orchestrator.state.tracking import Snapshot, finalize_over, snapshot
from refit_core.errors import ConfigError, RunDirError
from refit_core.planning.plan import Plan

# Defaults a site can set once, in the environment, instead of on every command.
ENV_DEFAULTS = {"cluster": "REFITCTL_CLUSTER", "partition": "REFITCTL_PARTITION", "account": "REFITCTL_ACCOUNT",
                "qos": "REFITCTL_QOS", "time": "REFITCTL_TIME"}
_OPTION_KEYS = ("cluster", "nodes", "tasks_per_node", "cpus_per_task", "request_gpus", "partition", "account", "qos",
                "time", "exclusive", "job_name", "sbatch_args", "srun_args", "env")


# ----------------------------------------------------------------------------- shared arguments

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
    g.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable for every task, repeatable (NCCL_*, NVSHMEM_*, REFITCTL_* of "
                        "your environment are carried already)")


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


def plan_and_spec(name: str, cfg: Any, opts: ClusterOptions, cluster: str, method_explicit: bool,
                  fit: bool = True) -> tuple[RunSpec, Plan]:
    """Decide the run. On SLURM, first ask `sinfo` whether the cluster can ever run it: if not,
    `--cluster slurm` stops here in one line, and `--cluster auto` runs it locally, saying why.
    `fit=False` skips that question (render writes a script for some cluster, not for this one)."""
    node_gpus = executor.local_gpu_count() if cluster == "local" else None
    gpus = bool(node_gpus) if cluster == "local" else opts.request_gpus
    host = executor.host_memory() if cluster == "local" else None
    spec = make_spec(name, cfg, cluster, opts, os.environ, method_explicit, gpus, os.cpu_count() or 1, node_gpus,
                     host)
    if cluster == "slurm" and fit:
        reason = slurm_misfit(spec)
        if reason is not None and opts.cluster == "slurm":
            raise ConfigError(f"this SLURM cluster cannot run {name}: {reason}: choose a partition that can "
                              "(--partition, --gpus-per-node), or run it here with --cluster local")
        if reason is not None:
            local, _ = plan_and_spec(name, cfg, opts, "local", method_explicit)
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


def print_intro(console: Console, spec: RunSpec, plan: Plan, why: str) -> None:
    """What is about to run: the seed's layout lines, the plan in one line, where and how."""
    cfg = spec.config
    for note in spec.notes:
        console.print(styled("[bold yellow]note:[/] {note}", note=note), highlight=False, soft_wrap=True)
    title = f"{cfg.name}" + (f" ({cfg.use_case})" if cfg.use_case else "")
    console.print(styled("[bold]{title}[/]: {rest}", title=title,
                         rest=f"{cfg.mode.value}, method {cfg.method}, {cfg.warmup} warm-up + {cfg.iterations} "
                              "timed iterations"), highlight=False)
    console.print(plan.world.describe(), highlight=False)
    dmap = cfg.device_map()
    if dmap is not None:
        console.print(f"GPUs: {dmap.describe(plan.world)}", highlight=False, soft_wrap=True)
    inv = plan.inventory
    console.print(f"Model: {inv.numel:,} parameters, {human_bytes(inv.nbytes)}; plan: {len(plan.transfers)} transfers, "
                  f"{human_bytes(plan.delivered_bytes)} delivered", highlight=False)
    where = "SLURM" if spec.cluster == "slurm" else "local processes"
    console.print(f"Executor: {where} ({why}); {spec.resources.describe()}", highlight=False, soft_wrap=True)


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
        for d, ref in zip(run_dirs, refs):
            update_run(d, job=ref.to_json())
    return refs


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


# ----------------------------------------------------------------------------- submit

@command("submit", "run a config (a name, or the seed's flags) as a job, watch it live, print its results")
def _submit(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_config_args(p)
    add_cluster_args(p)
    add_runs_dir(p)
    add_watch_args(p)
    p.add_argument("--name", help=f"run name (default: the config's name): 1 to {safety.NAME_MAX} {safety.NAME_CHARS}; "
                                  "the directory is runs/NAME-TIMESTAMP")

    def run(args: argparse.Namespace) -> int:
        console = wide_console()
        if args.name is not None:
            safety.name("--name", args.name)
        root = runs_root(args)
        cfg = resolve_config(args, gpu_memory=False)  # make_spec checks memory: the host's for a local CPU run
        opts = cluster_options(args)
        cluster, why = executor.detect_cluster(opts.cluster)
        spec, plan = plan_and_spec(args.name or cfg.name, cfg, opts, cluster, args.flag_refit_method is not None)
        if spec.cluster != cluster:
            cluster, why = spec.cluster, "the SLURM cluster cannot hold it"
        print_intro(console, spec, plan, why)
        run_dir = unique_dir(root, f"{spec.name}-{stamp()}")
        write_run(run_dir, spec, plan, command_line())
        try:
            ref = submit_runs([spec], [run_dir], run_dir / "submitit")[0]
        except KeyboardInterrupt:
            job = load_run(run_dir).get("job") if run_dir.is_dir() else None
            if not job:
                raise  # nothing was submitted (and nothing is left)
            console.print(styled("\n[bold]Detached[/]: {cluster} job {job} was submitted and keeps running.",
                                 cluster=job["cluster"], job=job["job_id"]), highlight=False)
            detach_hint(console, run_dir)
            return 130
        console.print(styled("Submitted {cluster} job {job}: [bold]{run_dir}[/]", cluster=ref.cluster, job=ref.job_id,
                             run_dir=run_dir), highlight=False)
        if args.detach:
            detach_hint(console, run_dir)
            return 0
        snaps = follow([run_dir], console, poll_seconds(args, cluster), None, run_dir)
        if snaps is None:
            return 130
        snaps = finalize_over(snaps)
        console.print(results_view(snaps[0]))
        return 0 if snaps[0].verified else 1

    return run


# ----------------------------------------------------------------------------- status / results / cancel / runs

@command("status", "where a run or sweep stands (the newest without RUN); --watch follows it until it is done")
def _status(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("target", metavar="RUN", type=run_target, nargs="?", help="run directory, its name under the runs directory, or a name prefix")
    add_runs_dir(p)
    p.add_argument("--watch", action="store_true", help="follow it live until it is done (Ctrl-C detaches)")
    p.add_argument("--poll", type=poll_arg, default=None, help="seconds between checks with --watch, 0.1 to 3600")

    def run(args: argparse.Namespace) -> int:
        console = wide_console()
        target = find_run(runs_root(args), args.target)
        if is_sweep(target):
            from orchestrator.commands.sweep import sweep_run_dirs, sweep_title

            dirs, title = sweep_run_dirs(target), sweep_title(target)
        else:
            dirs, title = [target], None
        if args.watch:
            cluster = (load_run(dirs[0]).get("job") or {}).get("cluster", "local") if dirs else "local"
            snaps = follow(dirs, console, poll_seconds(args, cluster), title, target)
            if snaps is None:
                return 130
        else:
            snaps = [snapshot(d) for d in dirs]
        if title is not None:
            console.print(comparison_view(snaps, title) if all(s.state.final for s in snaps)
                          else sweep_table(snaps, title))
        elif snaps[0].state.final:
            if not args.watch:
                console.print(run_header(snaps[0]))
            console.print(results_view(snaps[0]))
        elif not args.watch:
            console.print(run_view(snaps[0]))
        return 0

    return run


@command("results", "a run's per-iteration timings as a table, --csv or --json (a sweep: its comparison)")
def _results(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("target", metavar="RUN", type=run_target, help="run (or sweep) directory, its name, or a name prefix (newest)")
    add_runs_dir(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="per-iteration CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="results JSON on stdout (with the job state)")

    def run(args: argparse.Namespace) -> int:
        target = find_run(runs_root(args), args.target)
        if is_sweep(target):
            from orchestrator.commands.sweep import print_sweep_results

            return print_sweep_results(target, args.csv, args.json)
        s = snapshot(target)
        if s.progress.problems:
            more = f" (and {len(s.progress.problems) - 1} more)" if len(s.progress.problems) > 1 else ""
            raise ConfigError(f"{s.name}: rank file {s.progress.problems[0]}{more}: its iterations cannot be shown; "
                              f"move it out of {target / 'ranks'} to see the other ranks' results")
        res = s.results
        if res is None:
            from orchestrator.state.rundir import results as partial

            res = partial(target, s.info)
            print(f"refitctl: note: {s.name} is {s.state.state}: results so far", file=sys.stderr)
        if args.csv:
            emit(iterations_csv(res, s.info))
        elif args.json:
            emit(json.dumps({"run": s.name, "run_dir": str(target), "state": s.state.state,
                             "detail": s.state.detail, "method": s.info["spec"].get("method"), **res,
                             **s.diagnosis.to_json()}, indent=1) + "\n")
        else:
            wide_console().print(results_view(dataclasses.replace(s, results=res)))
        return 0 if s.verified else 1

    return run


@command("cancel", "cancel a run's job (or every run of a sweep)")
def _cancel(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("target", metavar="RUN", type=run_target, help="run (or sweep) directory, its name, or a name prefix (newest)")
    add_runs_dir(p)

    def run(args: argparse.Namespace) -> int:
        target = find_run(runs_root(args), args.target)
        if is_sweep(target):
            from orchestrator.commands.sweep import sweep_run_dirs

            dirs = sweep_run_dirs(target)
        else:
            dirs = [target]
        if len(dirs) == 1 and dirs[0] == target:
            print(cancel(target, load_run(target)))
            return 0
        rc = 0
        for d in dirs:  # a sweep: a broken run is said, the others are still cancelled
            try:
                print(cancel(d, load_run(d)))
            except RunDirError as e:
                print(f"refitctl: error: {e}", file=sys.stderr)
                rc = 2
        return rc

    return run


@command("runs", "list the runs and sweeps under the runs directory")
def _runs(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_runs_dir(p)
    p.add_argument("--last", type=last_arg, default=30, help=f"show the newest N, 1 to {MAX_LAST:,} (default 30)")

    def run(args: argparse.Namespace) -> int:
        root = runs_root(args)
        dirs = list_runs(root)[-args.last:]
        if not dirs:
            print(f"no runs under {root}: refitctl submit config-1 makes one")
            return 0
        t = Table(title=f"runs in {root}")  # the console reads no markup: a path is shown as written
        for col in ("run", "method", "job", "state", "verified", "median ms", "GB/s"):
            t.add_column(col, justify="right" if col in ("median ms", "GB/s") else "left", no_wrap=col == "run")
        for d in dirs:
            t.add_row(*_run_row(d))
        wide_console().print(t)
        return 0

    return run


MAX_LAST = 1_000_000


def last_arg(text: str) -> int:
    """argparse type of `runs --last`: a whole number from 1 (0 would mean "all" to a slice: refused)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LAST:
        raise ConfigError(f"--last {text!r}: give a whole number from 1 to {MAX_LAST:,}")
    return value


def _run_row(d: Path) -> list[Any]:
    """One row of `runs`; a damaged directory is one BROKEN row (never an error that hides the others)."""
    try:
        return _sweep_row(d) if is_sweep(d) else _single_row(d)
    except RunDirError as e:
        return [Text(d.name), "", Text(e.short()[:100]), Text("BROKEN", style="bold red"), "", "", ""]
    except (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [Text(d.name), "", Text(_damage(d, e)), Text("BROKEN", style="bold red"), "", "", ""]


def _sweep_row(d: Path) -> list[Any]:
    from orchestrator.state.runfiles import read_sweep_info
    from orchestrator.commands.sweep import sweep_run_dirs

    info = read_sweep_info(d)
    states, ok, n = set(), 0, 0
    for r in sweep_run_dirs(d):
        n += 1
        try:
            s = snapshot(r)
        except RunDirError:
            states.add("BROKEN")
            continue
        ok += s.verified
        states.add(s.state.state)
    return [d.name, "", f"sweep {info.name}, {n} runs", ", ".join(sorted(states)), f"{ok}/{n}", "", ""]


def _single_row(d: Path) -> list[Any]:
    s = snapshot(d)
    res = s.results or {}
    return [d.name, method_label(s.info), s.job_label, Text(s.state.state, style=state_style(s.state.state)),
            "" if not s.state.final else ("yes" if s.verified else "no"),
            "-" if res.get("median_ms") is None else f"{res['median_ms']:,.1f}",
            "-" if res.get("GBps") is None else f"{res['GBps']:.3f}"]


def _damage(d: Path, e: BaseException) -> str:
    """Why a run's row reads BROKEN, short: `refitctl results RUN` gives the whole line."""
    text = str(e) if isinstance(e, ConfigError) else f"{e.__class__.__name__}: {e}"
    return text.replace(f"{d}/", "").split(" (")[0][:60]


def emit(text: str) -> None:
    """Write to stdout; a reader that stops early (`| head`) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# `sweep` and `render` register themselves on import.
from orchestrator.submission import render as _render  # noqa: E402,F401
from orchestrator.commands import sweep as _sweep  # noqa: E402,F401
