"""`refitctl submit / status / results / cancel / runs`.

submit: config -> RunSpec (validated, layout printed) -> run directory -> executor -> live status
-> final table; exit code 0 only when the run verified. Ctrl-C detaches: the job keeps running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator import safety
from orchestrator.actions.comparison import print_sweep_results
from orchestrator.actions.args import add_cluster_args, add_config_args, add_runs_dir, add_watch_args, command, poll_arg, run_target
from orchestrator.actions.launch import detach_hint, follow, poll_seconds, prepare_where_it_fits, submit_runs
from orchestrator.actions.output import command_line, emit, wide_console
from orchestrator.actions.resolve import cluster_options, resolve_config, runs_root
from orchestrator.safety import styled
from orchestrator.state.jobstate import cancel
from orchestrator.state.runfiles import read_run_info, read_sweep_info
from orchestrator.state.rundir import (find_run, is_sweep, iterations_csv, list_runs, stamp, sweep_run_dirs,
                                       sweep_title, unique_dir, write_run)
from orchestrator.state.slurmquery import Look
from orchestrator.state.tracking import finalize_over, slurm_look, snapshot, snapshots
from orchestrator.submission import clusters
from orchestrator.submission.runspec import RunSpec
from orchestrator.views.liveview import (comparison_view, method_label, results_view, run_header, run_view, state_style,
                                         sweep_table)
from refit_core.numbers import human_bytes
from refit_core.errors import ConfigError, RunDirError
from refit_core.planning.plan import Plan


def print_intro(console: Console, spec: RunSpec, plan: Plan, why: str) -> None:
    """What is about to run: the seed's layout lines, the plan in one line, where and how."""
    cfg = spec.config
    for note in spec.notes:
        console.print(styled("[bold yellow]note:[/] {note}", note=note), highlight=False, soft_wrap=True)
    title = f"{cfg.name}" + (f" ({cfg.use_case})" if cfg.use_case else "")
    console.print(styled("[bold]{title}[/]: {rest}", title=title,
                         rest=f"{cfg.layouts.mode.value}, method {cfg.run.method}, {cfg.run.warmup} warm-up + {cfg.run.iterations} "
                              "timed iterations"), highlight=False)
    console.print(plan.world.describe(), highlight=False)
    dmap = spec.devices
    if dmap is not None:
        console.print(f"GPUs: {dmap.describe(plan.world)}", highlight=False, soft_wrap=True)
    inv = plan.inventory
    console.print(f"Model: {inv.numel:,} parameters, {human_bytes(inv.nbytes)}; plan: {len(plan.transfers)} transfers, "
                  f"{human_bytes(plan.delivered_bytes)} delivered", highlight=False)
    console.print(f"Executor: {clusters.get(spec.cluster).label} ({why}); {spec.resources.describe()}", highlight=False, soft_wrap=True)


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
        cluster, why = clusters.detect(opts.cluster)
        prepared = prepare_where_it_fits(args.name or cfg.name, cfg, opts, cluster, args.flag_refit_method is not None)
        spec, plan = prepared.spec, prepared.plan
        if spec.cluster != cluster.name:
            cluster, why = clusters.get(spec.cluster), "the SLURM cluster cannot hold it"
        print_intro(console, spec, plan, why)
        run_dir = unique_dir(root, f"{spec.name}-{stamp()}")
        write_run(run_dir, prepared, command_line())
        try:
            ref = submit_runs([spec], [run_dir], run_dir / "submitit")[0]
        except KeyboardInterrupt:
            job = read_run_info(run_dir).job if run_dir.is_dir() else None
            if job is None:
                raise  # nothing was submitted (and nothing is left)
            console.print(styled("\n[bold]Detached[/]: {cluster} job {job} was submitted and keeps running.",
                                 cluster=job.cluster, job=job.job_id), highlight=False)
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
            dirs, title = sweep_run_dirs(target), sweep_title(target)
        else:
            dirs, title = [target], None
        if args.watch:
            job = read_run_info(dirs[0]).job if dirs else None
            cluster = clusters.get(job.cluster) if job is not None else clusters.LOCAL
            snaps = follow(dirs, console, poll_seconds(args, cluster), title, target)
            if snaps is None:
                return 130
        else:
            snaps = snapshots(dirs)
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
            return print_sweep_results(target, args.csv, args.json)
        s = snapshot(target, records=True)
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
                             "detail": s.state.detail, "method": s.info.method, **res,
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
            dirs = sweep_run_dirs(target)
        else:
            dirs = [target]
        if len(dirs) == 1 and dirs[0] == target:
            print(cancel(target, read_run_info(target)))
            return 0
        rc = 0
        for d in dirs:  # a sweep: a broken run is said, the others are still cancelled
            try:
                print(cancel(d, read_run_info(d)))
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
        view = slurm_look(_all_run_dirs(dirs))  # one SLURM query for every run listed
        for d in dirs:
            t.add_row(*_run_row(d, view))
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


def _all_run_dirs(dirs: list[Path]) -> list[Path]:
    """The runs listed and those of the sweeps listed (a sweep that cannot be read is left to its row)."""
    out = []
    for d in dirs:
        try:
            out += sweep_run_dirs(d) if is_sweep(d) else [d]
        except (RunDirError, OSError):
            continue
    return out


def _run_row(d: Path, view: Look | None = None) -> list[Any]:
    """One row of `runs`; a damaged directory is one BROKEN row (never an error that hides the others)."""
    try:
        return _sweep_row(d, view) if is_sweep(d) else _single_row(d, view)
    except RunDirError as e:
        return [Text(d.name), "", Text(e.short()[:100]), Text("BROKEN", style="bold red"), "", "", ""]
    except (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [Text(d.name), "", Text(_damage(d, e)), Text("BROKEN", style="bold red"), "", "", ""]


def _sweep_row(d: Path, view: Look | None) -> list[Any]:

    info = read_sweep_info(d)
    states, ok, n = set(), 0, 0
    for r in sweep_run_dirs(d):
        n += 1
        try:
            s = snapshot(r, slurm=view)
        except RunDirError:
            states.add("BROKEN")
            continue
        ok += s.verified
        states.add(s.state.state)
    return [d.name, "", f"sweep {info.name}, {n} runs", ", ".join(sorted(states)), f"{ok}/{n}", "", ""]


def _single_row(d: Path, view: Look | None) -> list[Any]:
    s = snapshot(d, slurm=view)
    res = s.results or {}
    return [d.name, method_label(s.info, s.results), s.job_label, Text(s.state.state, style=state_style(s.state.state)),
            "" if not s.state.final else ("yes" if s.verified else "no"),
            "-" if res.get("median_ms") is None else f"{res['median_ms']:,.1f}",
            "-" if res.get("GBps") is None else f"{res['GBps']:.3f}"]


def _damage(d: Path, e: BaseException) -> str:
    """Why a run's row reads BROKEN, short: `refitctl results RUN` gives the whole line."""
    text = str(e) if isinstance(e, ConfigError) else f"{e.__class__.__name__}: {e}"
    return text.replace(f"{d}/", "").split(" (")[0][:60]


COMMANDS = (_submit, _status, _results, _cancel, _runs)
