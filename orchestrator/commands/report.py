"""`refitctl report RUN|SWEEP ...` (an HTML page and PNG charts) and `refitctl compare RUN_A RUN_B`.

This module reads run directories into `report.RunData` values and writes files; the charts and
the page themselves are pure functions in orchestrator/views/report.py. A run directory refitctl made
(run.json) is read the way `refitctl results` reads it; a bare job directory (config.json, as
`python -m jobs.refit_job DIR` or jobs.local leave it) works too, its plan recomputed from the
config. A directory that is missing or damaged is one line naming the path (exit code 2).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.table import Table
from rich.text import Text

from orchestrator import safety
from orchestrator.actions.args import add_runs_dir, command, run_target
from orchestrator.actions.output import wide_console
from orchestrator.actions.resolve import runs_root
from orchestrator.views.liveview import method_label
from orchestrator.submission.prepared import plan_json
from orchestrator.views.report import (RunData, need_matplotlib, png_bytes, report_html, run_images, summary_fields, write_file,
                                 sweep_figure)
from orchestrator.state.rundir import find_run, is_run, is_sweep, results, stamp, sweep_run_dirs, sweep_title
from orchestrator.safety import styled
from orchestrator.state.tracking import snapshot
from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.results import aggregate, read_results
from refit_core.jsonfile import read_regular

# ----------------------------------------------------------------------------- reading run directories


def resolve_target(root: Path, text: str) -> Path:
    """A run, sweep or bare job directory from a path, a name under `root`, or a name prefix."""
    p = Path(text)
    if p.is_dir() and not (is_run(p) or is_sweep(p)):
        if (p / "config.json").is_file():
            return p
        raise ConfigError(f"{p} is not a run or sweep directory (no run.json, sweep.json or config.json)")
    if not p.exists() and (os.sep in text or text.startswith(".")):
        raise ConfigError(f"{p}: no such run or sweep directory")
    return find_run(root, text)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_regular(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e.__class__.__name__}): the run directory is damaged") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None


def load_run_data(run_dir: Path) -> RunData:
    """Everything a report shows about one run; a damaged directory is a ConfigError naming it."""
    try:
        return _load_run_data(run_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ConfigError(f"{run_dir} is damaged: {e.__class__.__name__} {e} while reading it") from None


def _load_run_data(run_dir: Path) -> RunData:
    plan_path, res_path = run_dir / "plan.json", run_dir / "results.json"
    if plan_path.is_file():
        plan = _read_json(plan_path)
    else:
        cfg = RunConfig.from_json(_read_json(run_dir / "config.json"))
        plan = plan_json(cfg, cfg.plan())
    if is_run(run_dir):
        snap = snapshot(run_dir)  # reads only: a run over but not finalized is aggregated in memory
        info = snap.info
        # a finished run's summary (sampled iterations: bounded memory); else results.json checked
        # (refit_core.results.read_results), else the ranks
        res = snap.results if snap.results is not None and "iterations_recorded" in snap.results \
            else results(run_dir, info)
        return RunData(info.name, str(run_dir), info.config, info.mode or plan["mode"],
                       method_label(info, res), snap.state.state, snap.verified, res, plan)
    if res_path.is_file():
        res, state = read_results(res_path), "finished"
    else:
        res, state = aggregate(run_dir, list(range(plan["gpus_used"])),
                               plan["network_bytes"] + plan["local_bytes"]), "no results.json"
    return RunData(run_dir.name, str(run_dir), plan["config"], plan["mode"], plan["method"], state,
                   bool(res.get("verified")), res, plan)


def target_runs(target: Path) -> tuple[list[RunData], str]:
    """The runs of a run or sweep directory, and its title."""
    if is_sweep(target):
        return [load_run_data(d) for d in sweep_run_dirs(target)], sweep_title(target).split(" (")[0]
    run = load_run_data(target)
    return [run], run.name


# ----------------------------------------------------------------------------- writing files

def _file_prefixes(runs: Sequence[RunData]) -> list[str]:
    if len(runs) == 1:
        return [""]
    out, seen = [], set()
    for r in runs:
        base = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(r.run_dir).name)
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}.{k}"
        seen.add(name)
        out.append(name + "-")
    return out


def write_report(out: Path, title: str, runs: Sequence[RunData], with_sweep: bool) -> list[Path]:
    """report.html (images embedded) and every chart as PNG under `out`; the paths written."""
    images = [run_images(r) for r in runs]
    files: dict[str, bytes] = {}
    sweep_png = png_bytes(sweep_figure(runs, title)) if with_sweep else None
    if sweep_png is not None:
        files["sweep.png"] = sweep_png
    for prefix, im in zip(_file_prefixes(runs), images):
        files[f"{prefix}iterations.png"] = im.iterations
        files[f"{prefix}transfers.png"] = im.transfers
        files[f"{prefix}rank-bytes.png"] = im.rank_bytes
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    files["report.html"] = report_html(title, runs, images, sweep_png, generated).encode()
    for name, data in files.items():
        write_file(out / name, data)
    return [out / n for n in files]


@command("report", "charts of runs and sweeps: one HTML page (images embedded, opens offline) and PNG files")
def _report(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("targets", metavar="RUN|SWEEP", nargs="+", type=run_target,
                   help="run or sweep directory, its name, or a name prefix (newest); several make one report, "
                        "e.g. a sweep run with --refit-method nccl and one with nvshmem")
    p.add_argument("-o", "--out", type=lambda t: safety.directory("-o/--out", t), default=None,
                   help="folder for report.html and the PNGs (default: TARGET/report; several targets: "
                        "RUNS_DIR/report-TIMESTAMP)")
    add_runs_dir(p)

    def run(args: argparse.Namespace) -> int:
        need_matplotlib()
        root = runs_root(args)
        targets = [resolve_target(root, t) for t in args.targets]
        loaded = [target_runs(t) for t in targets]
        runs = [r for rs, _ in loaded for r in rs]
        if not runs:
            raise ConfigError(f"{targets[0]} holds no runs yet")
        title = "Refit report: " + ", ".join(t for _, t in loaded)
        out = args.out or (targets[0] / "report" if len(targets) == 1 else root / f"report-{stamp()}")
        with_sweep = len(runs) > 1 or any(is_sweep(t) for t in targets)
        written = write_report(out, title, runs, with_sweep)
        console = wide_console()
        console.print(styled("{n} run{s}: {pngs} PNG files and [bold]{html}[/]", n=len(runs),
                             s="s" if len(runs) != 1 else "", pngs=len(written) - 1, html=out / "report.html"),
                      highlight=False)
        for path in written[:-1]:
            console.print(f"  {path}", highlight=False, style="dim")
        return 0

    return run


# ----------------------------------------------------------------------------- compare

# key in report.summary_fields, and which way is better (None: neither, only different)
_NUMBERS = (("median_ms", "lower"), ("min_ms", "lower"), ("warmup_ms", "lower"), ("GBps", "higher"),
            ("delivered_bytes", None), ("network_bytes", None), ("local_bytes", None), ("transfers", None),
            ("timed_iterations", None), ("predicted_ms", None), ("bound_ms", None))
_WORDS = ("config", "mode", "method", "layouts", "payload", "state", "verified")


def _ratio(a: Any, b: Any, better: str | None) -> Text:
    if a is None or b is None:
        return Text("-", style="dim")
    if a == b:
        return Text("same", style="dim")
    if not a:
        return Text("-", style="dim")
    r = b / a
    style = ""
    if better and abs(r - 1) > 0.01:
        style = "green" if (r < 1) == (better == "lower") else "red"
    return Text(f"{r:.3f}x", style=style)


def compare_table(a: RunData, b: RunData) -> Table:
    """Every summary figure of A and B, and B/A: green where B is better, red where worse."""
    fa = {k: (label, raw, text) for k, label, raw, text in summary_fields(a)}
    fb = {k: (raw, text) for k, _, raw, text in summary_fields(b)}
    t = Table(title=f"A: {a.name}   B: {b.name}", caption=f"A: {a.run_dir}\nB: {b.run_dir}")
    for col, just in (("", "left"), ("A", "right"), ("B", "right"), ("B / A", "right")):
        t.add_column(col, justify=just)
    for k in _WORDS:
        label, raw_a, text_a = fa[k]
        raw_b, text_b = fb[k]
        t.add_row(label, text_a, text_b, Text("same", style="dim") if raw_a == raw_b else Text("differs", "yellow"))
    for k, better in _NUMBERS:
        label, raw_a, text_a = fa[k]
        raw_b, text_b = fb[k]
        if raw_a is None and raw_b is None:
            continue
        t.add_row(label, text_a, text_b, _ratio(raw_a, raw_b, better))
    return t


def _one_run(root: Path, text: str) -> RunData:
    target = resolve_target(root, text)
    if is_sweep(target):
        raise ConfigError(f"{target} is a sweep: compare takes two runs (refitctl report {target} charts its runs)")
    return load_run_data(target)


@command("compare", "two runs side by side: time, GB/s and bytes, with the ratio B/A")
def _compare(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("run_a", metavar="RUN_A", type=run_target, help="run directory, its name, or a name prefix (newest)")
    p.add_argument("run_b", metavar="RUN_B", type=run_target, help="the run to set against RUN_A")
    add_runs_dir(p)

    def run(args: argparse.Namespace) -> int:
        root = runs_root(args)
        a, b = _one_run(root, args.run_a), _one_run(root, args.run_b)
        wide_console().print(compare_table(a, b))
        return 0

    return run


COMMANDS = (_report, _compare)
