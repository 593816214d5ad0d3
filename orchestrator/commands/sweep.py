"""`refitctl sweep NAME|LIST`: many configs as one SLURM job array (locally: one after another).

    runs/sweep-<NAME>-<TIMESTAMP>/
      sweep.json        configs, options, job ids, and each config's run directories (retries last)
      config-1/ ...     one run directory per config (config-1.2 after a --resume retry)
      comparison.csv / comparison.json   written once every run is over

`--resume` reruns only the configs whose latest run did not verify, with the settings stored in
sweep.json. The comparison at the end sets time and GB/s side by side, by method (NCCL vs NVSHMEM)
and by refit kind (TP refit vs EP refit).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

from orchestrator import configs, safety
from orchestrator.submission import clusters
from orchestrator.actions.args import add_cluster_args, add_runs_dir, add_watch_args, command, config_file
from orchestrator.actions.launch import detach_hint, follow, interrupts_deferred, poll_seconds, prepare_where_it_fits, submit_runs
from orchestrator.actions.comparison import write_comparison
from orchestrator.actions.output import command_line, wide_console
from orchestrator.actions.resolve import cluster_options, run_settings, runs_root
from orchestrator.configs.flags import add_flags, apply_overrides, overrides_from_args
from orchestrator.views.liveview import comparison_view, method_label
from orchestrator.submission.prepared import now_iso
from orchestrator.state.rundir import (SWEEP_FILE, is_sweep, list_runs, load_config, stamp, sweep_run_dirs, sweep_title,
                                 unique_dir, write_run)
from orchestrator.state.runfiles import (SweepInfo, locked, read_run_info, read_sweep_info, update_sweep_file,
                                         write_sweep_file)
from orchestrator.submission.runspec import RunSpec
from orchestrator.safety import styled
from orchestrator.state.tracking import finalize_over, snapshot
from refit_core.errors import ConfigError
from refit_core.results import write_json_atomic


def sweep_configs(name: str, config_file: Path | None) -> list[str]:
    """Config names of a named sweep (8gpu, non-collocated, collocated, all) or a comma-separated list."""
    known = configs.builtin_configs()
    if config_file is not None:
        known.update(configs.load_user_configs(config_file))
    if name == "all":
        return list(known)
    if name in configs.SWEEPS:
        return list(configs.SWEEPS[name])
    names = [n.strip() for n in name.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown config or sweep {', '.join(unknown) or name!r}: use {', '.join(configs.SWEEPS)}, "
                          "all, or a comma-separated list of configs (refitctl list)")
    return list(dict.fromkeys(names))


def launch(specs: list[RunSpec], dirs: list[Path], sweep_dir: Path) -> list[str]:
    """Submit each run to its own cluster (a run SLURM cannot hold goes local beside the others): locally one
    controller runs its runs in order; on SLURM one job array per shape. Returns job ids."""
    ids = []
    for name in dict.fromkeys(s.cluster for s in specs):
        mine = [i for i, s in enumerate(specs) if s.cluster == name]
        for batch in clusters.get(name).batches([specs[i] for i in mine]):
            idx = [mine[b] for b in batch]
            refs = submit_runs([specs[i] for i in idx], [dirs[i] for i in idx], sweep_dir / "submitit")
            ids.append(refs[0].job_id.split("_")[0] if len(refs) > 1 else refs[0].job_id)
    return ids


@command("sweep", "run many configs (8gpu, non-collocated, collocated, all, or a list) as one job array, "
                  "then compare them")
def _sweep(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("sweep", nargs="?", help="8gpu, non-collocated, collocated, all, or config-1,config-4,...")
    p.add_argument("--config-file", type=config_file, help="TOML file with [configs.NAME] tables (see docs/adding-a-config.md)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="SWEEP_DIR",
                   help="rerun only what did not verify, in the newest sweep of that name (or SWEEP_DIR)")
    p.add_argument("--skip-invalid", action="store_true", help="leave out configs that cannot run with these flags")
    add_cluster_args(p)
    add_runs_dir(p)
    add_watch_args(p)
    add_flags(p)

    def run(args: argparse.Namespace) -> int:
        console = wide_console()
        root = runs_root(args)
        if args.resume:
            sweep_dir = _resume_target(args, root)
            with locked(sweep_dir):  # a second --resume waits, then sees these runs submitted
                specs, dirs, where = _prepare_resume(args, sweep_dir)
                _launch_and_record(console, specs, dirs, sweep_dir, where, holding_lock=True)
        else:
            if not args.sweep:
                raise ConfigError("name a sweep (8gpu, all, ...) or a list of configs; `refitctl sweep --help`")
            sweep_dir, specs, dirs, where = _prepare_new(args, root, console)
            _launch_and_record(console, specs, dirs, sweep_dir, where, holding_lock=False)
        if args.detach and specs:
            detach_hint(console, sweep_dir)
            return 0
        poll = poll_seconds(args, clusters.get(specs[0].cluster) if specs else clusters.LOCAL)
        snaps = follow(sweep_run_dirs(sweep_dir), console, poll, sweep_title(sweep_dir), sweep_dir)
        if snaps is None:
            console.print(f"Resume later (reruns what did not verify): refitctl sweep --resume {sweep_dir}",
                          highlight=False)
            return 130
        snaps = finalize_over(snaps)
        write_comparison(sweep_dir, snaps)
        console.print(comparison_view(snaps, sweep_title(sweep_dir)))
        console.print(f"comparison: {sweep_dir / 'comparison.csv'}", highlight=False)
        return 0 if all(s.verified for s in snaps) else 1

    return run


def _launch_and_record(console: Any, specs: list[RunSpec], dirs: list[Path], sweep_dir: Path,
                       where: tuple["clusters.Cluster", str],
                       holding_lock: bool) -> None:
    """Submit the prepared runs and add their job ids to sweep.json (read-modify-write under the lock)."""
    if not specs:
        console.print(f"every config of {sweep_dir} verified already: nothing to rerun", highlight=False)
        return
    cluster = clusters.get(specs[0].cluster)
    for line in executor_lines(specs, where):
        console.print(line, highlight=False, soft_wrap=True)
    with interrupts_deferred():  # the ids reach sweep.json before a Ctrl-C is let through
        ids = launch(specs, dirs, sweep_dir)
        record = write_sweep_file if holding_lock else update_sweep_file
        record(sweep_dir, lambda data: data.__setitem__("jobs", [*data.get("jobs", []), *ids]))
    console.print(styled("Submitted {n} runs ({cluster} job{s} {ids}): [bold]{sweep_dir}[/]", n=len(specs),
                         cluster=cluster.name, s="s" if len(ids) > 1 else "", ids=", ".join(ids), sweep_dir=sweep_dir),
                  highlight=False)


def executor_lines(specs: list[RunSpec], where: tuple["clusters.Cluster", str]) -> list[str]:
    """Where the sweep's runs go, and why. `where`: the cluster --cluster chose and its reason; runs that
    prepare_where_it_fits moved off it (SLURM cannot hold them) say that instead."""
    chosen, why = where
    lines = []
    for name in dict.fromkeys(s.cluster for s in specs):
        cluster = clusters.get(name)
        group = [s for s in specs if s.cluster == name]
        reason = why if cluster is chosen else f"the {chosen.label} cluster cannot hold them"
        names = "" if len(group) == len(specs) else f" for {', '.join(s.name for s in group)}"
        lines.append(f"Executor: {cluster.label}{names} ({reason}); {group[0].resources.describe()}{cluster.grouping}")
    return lines


def _prepare_new(args: argparse.Namespace, root: Path, console: Any) -> tuple[Path, list[RunSpec], list[Path],
                                                                              tuple["clusters.Cluster", str]]:
    names = sweep_configs(args.sweep, args.config_file)
    opts = cluster_options(args)
    cluster, why = clusters.detect(opts.cluster)
    overrides = overrides_from_args(args)
    explicit = args.flag_refit_method is not None
    settings = run_settings(args)
    runs, bad = [], []
    for name in names:
        try:
            cfg = apply_overrides(configs.resolve(name, args.config_file), overrides).with_environment(settings)
            runs.append(prepare_where_it_fits(name, cfg, opts, cluster, explicit))
        except ConfigError as e:
            bad.append(f"{name}: {e}")
            continue
    specs = [r.spec for r in runs]
    if bad and not args.skip_invalid:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"{bad[0]}{more}; --skip-invalid leaves such configs out")
    for line in bad:
        console.print(styled("[yellow]skipped[/] {line}", line=line), highlight=False)
    if not specs:
        raise ConfigError("no config of the sweep can run with these settings")
    notes = sorted({n for s in specs for n in s.notes})
    if notes:
        console.print(styled("[bold yellow]note:[/] no CUDA GPU available: configs asking for nccl or nvshmem run "
                             "with gloo on the CPU (on GPUs they run their own method)"), highlight=False, soft_wrap=True)
    label = args.sweep if (args.sweep in configs.SWEEPS or args.sweep == "all") else "custom"
    sweep_dir = unique_dir(root, f"sweep-{label}-{stamp()}")
    try:
        dirs = []
        for run in runs:
            spec, plan = run.spec, run.plan
            d = unique_dir(sweep_dir, spec.name)
            write_run(d, run, command_line(), sweep=sweep_dir)
            dirs.append(d)
            w = plan.world
            console.print(f"  {spec.name}: world {w.world_size} ({w.gpus_used} active), {spec.config.layouts.mode.value}, "
                          f"method {method_label(read_run_info(d))}", highlight=False)
        data = {"version": 1, "name": label, "created": now_iso(), "command": command_line(),
                "configs": [s.name for s in specs], "cluster": cluster.name, "options": specs[0].options.to_json(),
                "runs": {s.name: [d.name] for s, d in zip(specs, dirs)}, "jobs": []}
        write_json_atomic(sweep_dir / SWEEP_FILE, data)
    except BaseException:  # a full disk, Ctrl-C: nothing was submitted, no half-made sweep is left
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    return sweep_dir, specs, dirs, (cluster, why)


def _resume_target(args: argparse.Namespace, root: Path) -> Path:
    if overrides_from_args(args) or args.config_file:
        raise ConfigError("--resume reruns with the sweep's stored configs: drop the seed flags and --config-file")
    if args.resume == "latest":
        prefix = f"sweep-{args.sweep}-" if args.sweep else "sweep-"
        found = [d for d in list_runs(root) if is_sweep(d) and d.name.startswith(prefix)]
        if not found:
            raise ConfigError(f"no sweep {args.sweep or ''} under {root} to resume")
        return found[-1]
    sweep_dir = safety.path_text("--resume", args.resume)
    if not is_sweep(sweep_dir):
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE})")
    return sweep_dir


def _prepare_resume(args: argparse.Namespace, sweep_dir: Path) -> tuple[list[RunSpec], list[Path],
                                                                         tuple["clusters.Cluster", str]]:
    """The runs to do again (the latest run of a config did not verify); the caller holds the sweep's lock."""
    data: SweepInfo = read_sweep_info(sweep_dir)
    opts = cluster_options(args, base=data.options)
    cluster, why = clusters.detect(opts.cluster)
    specs, dirs = [], []
    for name in data.configs:
        if not data.runs.get(name):
            raise ConfigError(f"{sweep_dir / SWEEP_FILE} lists config {name} without a run directory: "
                              "the sweep directory is damaged")
        last = sweep_dir / data.runs[name][-1]
        snap = snapshot(last)
        if snap.verified:
            continue
        if not snap.state.final:
            raise ConfigError(f"{name} ({last}) is still {snap.state.state}: wait for it or cancel it first")
        old = read_run_info(last).requested_method
        run = prepare_where_it_fits(name, load_config(last), opts, cluster, True)
        spec = dataclasses.replace(run.spec, requested_method=run.spec.requested_method if old is None else old)
        d = unique_dir(sweep_dir, name)
        write_run(d, dataclasses.replace(run, spec=spec), command_line(), sweep=sweep_dir)
        specs.append(spec)
        dirs.append(d)

    def change(raw: dict[str, Any]) -> None:
        for spec, d in zip(specs, dirs):
            raw["runs"][spec.name].append(d.name)
        raw["options"] = opts.to_json()
        raw.setdefault("resumed", []).append(now_iso())

    write_sweep_file(sweep_dir, change)
    return specs, dirs, (cluster, why)


COMMANDS = (_sweep,)
