"""Deciding, submitting and following runs: a RunSpec and its plan made once (`PreparedRun`), the SLURM fit check,
submission that records job ids and survives Ctrl-C, and the live view until the runs are done."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import shutil
import signal
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from orchestrator.safety import styled
from orchestrator.state.rundir import STATE_FILE, update_run
from orchestrator.state.tracking import Snapshot
from orchestrator.submission import clusters
from orchestrator.submission.clusters import Cluster
from orchestrator.submission.executor import JobRef
from orchestrator.submission.prepared import PreparedRun
from orchestrator.submission.runspec import ClusterOptions, RunSpec, make_spec
from orchestrator.views.liveview import watch
from refit_core import environment
from refit_core.config import RunConfig
from refit_core.errors import ConfigError, RunDirError


def _spec(name: str, cfg: RunConfig, opts: ClusterOptions, cluster: Cluster, method_explicit: bool) -> RunSpec:
    return make_spec(name, cfg, cluster, opts, environment.snapshot(), method_explicit, cluster.facts(opts))


def prepare_for(name: str, cfg: RunConfig, opts: ClusterOptions, cluster: Cluster,
                method_explicit: bool) -> PreparedRun:
    """Decide and plan the run for `cluster` as given (render: a script for some cluster, not this one)."""
    return PreparedRun.of(_spec(name, cfg, opts, cluster, method_explicit))


def prepare_where_it_fits(name: str, cfg: RunConfig, opts: ClusterOptions, cluster: Cluster,
                          method_explicit: bool) -> PreparedRun:
    """Decide and plan a run that is about to be submitted. First ask the cluster whether it can ever run it
    (SLURM: `sinfo`): if not, `--cluster slurm` stops here in one line, and `--cluster auto` runs it locally,
    saying why."""
    spec = _spec(name, cfg, opts, cluster, method_explicit)
    reason = cluster.misfit(spec)
    if reason is not None:
        if opts.cluster != "auto":  # the user named the cluster: no fallback
            raise ConfigError(f"this SLURM cluster cannot run {name}: {reason}: choose a partition that can "
                              "(--partition, --gpus-per-node), or run it here with --cluster local")
        local = _spec(name, cfg, opts, clusters.LOCAL, method_explicit)
        note = (f"SLURM here cannot run {name} ({reason}): running it as local processes instead "
                "(--cluster slurm insists on SLURM)")
        spec = dataclasses.replace(local, notes=(note, *local.notes))
    return PreparedRun.of(spec)


def submit_runs(specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[JobRef]:
    """Submit and record the job ids in each run.json.

    Ctrl-C is held back from the submission until the job ids are recorded (then it is raised, and
    the caller detaches): a job that started always has its run directory. A submission that fails
    removes the run directories whose job never started, and only those.
    """
    with interrupts_deferred():
        try:
            refs = clusters.get(specs[0].cluster).submit(specs, run_dirs, folder)
        except BaseException as e:
            for d in run_dirs:
                if not job_started(d):
                    shutil.rmtree(d, ignore_errors=True)
            if isinstance(e, OSError):
                raise RunDirError(folder, f"cannot be written ({e.strerror or e})",
                                  "free some space or point --runs-dir at a writable disk; nothing was submitted") \
                    from None
            raise
        record_jobs(run_dirs, refs, clusters.get(specs[0].cluster))
    return refs


def record_jobs(run_dirs: Sequence[Path], refs: Sequence[JobRef], cluster: Cluster) -> None:
    """Write each job id into its run.json. When that fails (a disk full right after the controller or
    sbatch started), a job refitctl cannot follow must not run on: it is withdrawn (the controller stopped,
    the SLURM job cancelled), the run directories removed, and the error says so (issue 25, item 1)."""
    try:
        for d, ref in zip(run_dirs, refs):
            update_run(d, job=ref.to_json())
    except (OSError, RunDirError) as e:
        gone = cluster.withdraw(refs)
        for d in run_dirs:
            shutil.rmtree(d, ignore_errors=True)
        why = e.short() if isinstance(e, RunDirError) else (e.strerror or str(e))
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


def poll_seconds(args: argparse.Namespace, cluster: Cluster) -> float:
    return args.poll if args.poll else cluster.poll_s


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
