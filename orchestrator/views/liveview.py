"""How runs look to people: the live status (queued -> running -> iteration k/N), results and sweep tables.

Rendering functions take Snapshots and return rich renderables; `watch()` polls until every run is
over, redrawing in place on a terminal and printing one line per change otherwise (CI logs).
"""

from __future__ import annotations

import json
import re

import statistics
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from refit_core.numbers import gbps_short, human_bytes, ms_short
from refit_core.numbers import format_time
from orchestrator.state.runfiles import ParallelDims, RunInfo
from orchestrator.state.tracking import Snapshot, snapshots
from refit_core.environment import rank_log_name
from refit_core.jsonfile import read_regular

_ELAPSED = re.compile(r" \d+\.\d s\b")  # "importing torch 2.1 s": the seconds a rank has been in its phase
_UNKNOWN_POLLS = 3  # an UNKNOWN state must persist this many polls before the watch gives up


def state_style(state: str) -> str:
    if state == "COMPLETED":
        return "bold green"
    if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        return "bold cyan"
    if state in ("PENDING", "SUBMITTED", "REQUEUED", "SUSPENDED"):
        return "bold yellow"
    return "bold red"


def method_label(info: RunInfo, res: dict[str, Any] | None = None) -> str:
    """The method that ran, and the one asked for when they differ: a GPU method on the CPU runs gloo, decided
    before launch (run.json) or, on SLURM nodes without CUDA, by the ranks (results' `method`)."""
    m, req = info.method, info.requested_method
    ran = (res or {}).get("method")
    if isinstance(ran, str) and ran and ran != m:
        m, req = ran, req or m
    return m if not req or req == m else f"{m} (for {req})"


def refit_kind(info: RunInfo) -> str:
    """Which dimensions the refit changes: 'TP refit', 'EP refit', 'TP+EP refit' or 'same layout'."""
    s, d = info.source, info.destination
    changed = [k.upper() for k in ("tp", "ep", "pp") if getattr(s, k) != getattr(d, k)]
    return "same layout" if not changed else "+".join(changed) + " refit"


def layout_label(lay: ParallelDims) -> str:
    return f"TP={lay.tp},EP={lay.ep}" + (f",PP={lay.pp}" if lay.pp > 1 else "")


def phase_label(s: Snapshot, now: float | None = None) -> str:
    """'queued', 'starting (8/8 tasks up: 6 in importing torch 2.1 s, 2 idle)', then the progress."""
    if s.state.queued:
        return "queued"
    if not s.progress.started and not s.state.final:
        up = len(list((s.run_dir / "logs").glob("rank-*.log")))
        where = starting_phases(s.progress, now)
        return f"starting ({up}/{s.info.world_size} tasks up{': ' + where if where else ''})"
    return s.progress.phase()


IN_LOOP = ("warm-up", "iterations")  # phases the progress counts already


def starting_phases(p: Any, now: float | None = None) -> str:
    """Where the ranks are while the run starts: '6 in importing torch 2.1 s, 2 idle' (each phase with
    the longest any rank has been in it), in the order the ranks entered them."""
    now = time.time() if now is None else now
    groups: dict[str, list[float]] = {}
    idle = 0
    for r in p.ranks:
        if r.error:
            continue
        if r.complete:
            idle += r.rank >= p.active
            continue
        if r.phase is not None:
            groups.setdefault(r.phase, []).append(now - r.phase_since if r.phase_since is not None else 0.0)
    parts = [f"{len(v)} in {name} {max(0.0, max(v)):.1f} s"
             for name, v in sorted(groups.items(), key=lambda kv: -max(kv[1]))]
    return ", ".join(parts + ([f"{idle} idle"] if idle else []))


def rank_status(r: Any, active: int, now: float | None = None) -> Text:
    """A rank row's status: its error, done, idle, the phase it is in with its time (start-up and
    teardown), or 'running' (in the iterations, which the done column counts)."""
    if r.error:
        return Text(r.error.splitlines()[0][:90], style="red")
    if r.verified and r.complete:
        return Text("done, verified" if r.rank < active else "idle", style="green" if r.rank < active else "dim")
    if r.phase is not None and r.phase not in IN_LOOP:
        since = 0.0 if r.phase_since is None else max(0.0, (time.time() if now is None else now) - r.phase_since)
        return Text(f"{r.phase[:70]} {since:.1f} s", style="yellow")
    return Text("running")


def status_line(s: Snapshot) -> str:
    """One line: `config-1: RUNNING, iteration 2/3, last 1,234.5 ms`."""
    parts = [f"{s.name}: {s.state.describe()}"]
    if not s.state.queued:
        parts.append(phase_label(s))
        if s.progress.last_ms is not None:
            parts.append(f"last {ms_short(s.progress.last_ms)} ms")
    if s.state.final:
        parts.append("verified" if s.verified else "NOT verified")
    return ", ".join(parts)


def run_header(s: Snapshot) -> Text:
    return Text.assemble((s.name, "bold"), f"  {s.run_dir}  ", (s.job_label, "dim"))


def run_view(s: Snapshot) -> Group:
    """The status of one run: header, state and progress, the ranks, the errors."""
    job = s.info.job
    head = run_header(s)
    state = Text.assemble(("state ", ""), (s.state.state, state_style(s.state.state)))
    if s.state.detail:
        state.append(f" ({s.state.detail})", style="dim")
    if not s.state.queued:
        state.append(f" · {phase_label(s)}")
        if s.progress.last_ms is not None:
            state.append(f" · last {ms_short(s.progress.last_ms)} ms")
    if not s.state.final and job is not None and job.submitted:
        state.append(f" · {format_time(time.time() - job.submitted)} since submission", style="dim")
    parts: list[Any] = [head, state]
    if s.progress.ranks:
        parts.append(rank_table(s))
    parts.extend(error_lines(s))
    return Group(*parts)


def rank_table(s: Snapshot) -> Table:
    p = s.progress
    t = Table(show_edge=False, pad_edge=False, box=None)
    for col, just in (("rank", "right"), ("role", "left"), ("done", "right"), ("last ms", "right"), ("status", "left")):
        t.add_column(col, justify=just)
    rows = p.ranks if len(p.ranks) <= 16 else _role_summary(p.ranks)
    for r in rows:
        status = rank_status(r, p.active)
        done = p.count(r.done) if r.rank < p.active else "-"
        t.add_row(str(r.rank), r.role, done, ms_short(r.last_ms), status)
    if len(p.ranks) > 16:
        t.caption = f"{len(p.ranks)} ranks: first of each role shown, and every rank with an error"
    return t


def _role_summary(ranks: Iterable[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for r in ranks:
        if r.error or r.role not in seen:
            out.append(r)
            seen.add(r.role)
    return out


def error_lines(s: Snapshot) -> list[Text]:
    """The first failure (rank, role, why), the ranks that failed after it, and those stopped."""
    d = s.diagnosis
    out: list[Text] = []
    if d.first is not None:
        first = d.first
        out.append(Text.assemble(("first failure: ", "bold red"), f"rank {first.rank} ({first.role}): ",
                                 (first.reason, "red")))
        out.append(Text(f"  log: {s.run_dir / 'logs' / rank_log_name(first.rank)}", style="dim"))
    real = [f for f in d.others if f.kind != "stopped"]
    for f in real[:3]:
        out.append(Text(f"then rank {f.rank}: {f.reason[:150]}", style="red"))
    if len(real) > 3:
        out.append(Text(f"... and {len(real) - 3} more ranks with errors", style="red"))
    if d.stopped:
        out.append(Text(f"{d.stopped} rank(s) were stopped by the scheduler or the controller "
                        f"({s.state.state})", style="yellow"))
    if d.first is None and s.state.final and not s.verified and s.state.state not in ("CANCELLED", "TIMEOUT"):
        tail = log_tail(s.run_dir, 0)
        if tail:
            out.append(Text("last lines of rank 0's log:", style="dim"))
            out.extend(Text("  " + ln, style="dim") for ln in tail)
    for prob in s.progress.problems:
        out.append(Text(f"unreadable rank file: {prob}", style="yellow"))
    return out


def log_tail(run_dir: Path, rank: int, n: int = 5) -> list[str]:
    try:
        lines = read_regular(run_dir / "logs" / rank_log_name(rank)).decode(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def results_view(s: Snapshot) -> Group:
    """The final table of a run: per-iteration timings, the summary, where the files are."""
    res = s.results or {}
    t = Table(title=f"{s.name}: per-iteration timings (slowest rank)")
    phases = sorted({k for i in res.get("iterations", []) for k in (i.get("phases_ms") or {})})
    for col in ("iteration", "time ms", "GB/s", *(f"{p} ms" for p in phases), "launches"):
        t.add_column(col, justify="right")
    its = res.get("iterations", [])
    total = res.get("iterations_recorded", len(its))  # a summary's iterations are a sample of them
    shown = its if total <= 25 else [*its[:6], None, *its[-10:]]
    for i in shown:
        if i is None:
            t.add_row(f"... {total - 16} more", *[""] * (len(t.columns) - 1))
            continue
        label = "warm-up" if i.get("warmup") else str(i["iteration"])
        t.add_row(label, ms_short(i["time_ms"]), gbps_short(i.get("GBps")),
                  *(ms_short((i.get("phases_ms") or {}).get(p)) for p in phases), str(i.get("launches", "")))
    verdict = Text("verified", style="bold green") if s.verified else Text("NOT verified", style="bold red")
    detail = f" ({s.state.detail})" if s.state.detail else ""
    summary = Text.assemble(
        (s.state.state, state_style(s.state.state)), detail, " · ", verdict,
        f" · first {ms_short(res.get('first_ms'))} ms · median {ms_short(res.get('median_ms'))} ms · min {ms_short(res.get('min_ms'))} ms"
        f" · {gbps_short(res.get('GBps'))} GB/s · {delivered_text(res)}"
        f" · method {method_label(s.info, res)}",
    )
    done = res.get("timed_recorded", sum(1 for i in res.get("iterations", []) if not i.get("warmup")))
    planned = s.info.iterations
    if done < planned or not res.get("complete", s.verified):
        summary.append(f" · incomplete: {done} of {planned} timed iterations recorded", style="bold yellow")
    extra = [x for x in (predicted_line(s.run_dir, res), memory_line(res)) if x is not None]
    if extra:
        summary = Group(summary, *extra)
    files = Text(f"run directory: {s.run_dir} (results.json, iterations.csv, logs/)", style="dim")
    parts: list[Any] = [t if res.get("iterations") else Text(f"{s.name}: no iteration finished", style="bold"),
                        summary]
    if res.get("restarts"):
        parts.append(Text(f"requeued {res['restarts']} time(s) (preempted, or a node was lost): the refit started "
                          "again from scratch; these are the final attempt's results", style="yellow"))
    if res.get("aggregated_by"):
        parts.append(Text(f"results aggregated by {res['aggregated_by']}", style="dim"))
    parts.extend(error_lines(s))
    parts.append(files)
    return Group(*parts)


def delivered_text(res: dict[str, Any]) -> str:
    """Bytes one iteration delivered, or 'nothing delivered' when no iteration (warm-up included) finished."""
    if not res.get("iterations"):
        return "nothing delivered"
    return f"{human_bytes(res.get('delivered_bytes', 0))} delivered per iteration"


def memory_line(res: dict[str, Any]) -> Text | None:
    """Device memory the transport took beyond the shards: measured where the transport measures it
    (nvshmem), else as allocated (staging buffers and copy descriptors)."""
    measured, allocated = res.get("extra_bytes_measured_max"), res.get("extra_bytes_max")
    how = res.get("transport") or {}
    if isinstance(measured, int):
        line = f"memory beyond the shards: {human_bytes(max(measured, 0))} per GPU, measured"
        if how.get("placement"):
            line += f" (NVSHMEM placement {how['placement']}, docs/benchmarks.md)"
    elif isinstance(allocated, int):
        line = f"memory beyond the shards: {human_bytes(allocated)} per rank, as allocated (staging, descriptors)"
    else:
        return None
    return Text(line, style="dim")


def predicted_line(run_dir: Path, res: dict[str, Any]) -> Text | None:
    """The time model's prediction (stored in plan.json at submission) against the measured median."""
    from orchestrator.views.report import has_link_model

    try:
        plan = json.loads(read_regular(run_dir / "plan.json"))
        pred = plan.get("predicted") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not has_link_model(plan.get("method")):
        return None  # the link model describes NVLink and network adapters, not gloo between CPU processes
    t, bound = pred.get("time_s"), pred.get("bound_s")
    if not isinstance(t, (int, float)) or t <= 0:
        return None
    model = pred.get("model") if isinstance(pred.get("model"), dict) else {}
    source = model.get("source") if isinstance(model.get("source"), str) else "defaults, docs/kimi-k2.md"
    line = f"predicted (link model: {source[:160]}): {t * 1e3:.3f} ms"
    if isinstance(bound, (int, float)):
        line += f", lower bound {bound * 1e3:.3f} ms"
    med = res.get("median_ms")
    if isinstance(med, (int, float)) and med > 0:
        line += f"; measured median {med:.3f} ms = {med / (t * 1e3):.2f}x predicted"
    return Text(line, style="dim")


def sweep_table(snaps: Sequence[Snapshot], title: str) -> Table:
    t = Table(title=title)
    for col in ("config", "state", "progress", "last ms", "median ms", "GB/s"):
        t.add_column(col, justify="left" if col in ("config", "state", "progress") else "right")
    for s in snaps:
        res = s.results or {}
        t.add_row(s.info.config, Text(s.state.state, style=state_style(s.state.state)), phase_label(s),
                  ms_short(s.progress.last_ms), ms_short(res.get("median_ms")), gbps_short(res.get("GBps")))
    return t


def comparison_view(snaps: Sequence[Snapshot], title: str) -> Group:
    """The sweep's comparison: every config, then by method (NCCL vs NVSHMEM) and by refit kind (TP vs EP)."""
    t = Table(title=title)
    for col in ("config", "mode", "method", "source -> destination", "refit", "GPUs", "state", "median ms", "GB/s"):
        t.add_column(col, justify="right" if col in ("GPUs", "median ms", "GB/s") else "left",
                     no_wrap=col in ("config", "mode", "source -> destination"))
    for s in snaps:
        res = s.results or {}
        state = Text(s.state.state, style=state_style(s.state.state))
        if s.state.state == "COMPLETED" and not s.verified:
            state = Text("COMPLETED, not verified", style="bold red")
        t.add_row(s.info.config, s.info.mode, method_label(s.info, res),
                  f"{layout_label(s.info.source)} -> {layout_label(s.info.destination)}", refit_kind(s.info),
                  str(s.info.active_ranks), state, ms_short(res.get("median_ms")), gbps_short(res.get("GBps")))
    parts: list[Any] = [t, _group_table(snaps, "method", method_label), _group_table(snaps, "refit", refit_kind)]
    for s in snaps:
        why = failure_summary(s)
        if why:
            parts.append(Text.assemble((f"{s.info.config}: ", "bold red"), why))
    return Group(*parts)


def failure_summary(s: Snapshot) -> str | None:
    """Why a finished run did not verify, in one line: the first failure, else the log's last error."""
    if not s.state.final or s.verified:
        return None
    first = s.diagnosis.first
    if first is not None:
        return f"rank {first.rank}: {first.reason[:200]}"
    for rank in range(min(s.info.world_size, 8)):
        errs = [ln.strip() for ln in log_tail(s.run_dir, rank, 40) if "Error" in ln or "error:" in ln]
        if errs:
            return f"{s.state.describe()}; rank {rank}'s log: {errs[-1][:150]}"
    return s.state.describe()


def _group_table(snaps: Sequence[Snapshot], name: str, key: Any) -> Table:
    groups: dict[str, list[Snapshot]] = {}
    for s in snaps:
        groups.setdefault(key(s.info), []).append(s)
    t = Table(title=f"by {name}")
    for col in (name, "configs", "verified", "median GB/s", "best GB/s", "median ms"):
        t.add_column(col, justify="left" if col == name else "right")
    for label, ss in sorted(groups.items()):
        ok = [s for s in ss if s.verified and s.results and s.results.get("GBps")]
        gb = [s.results["GBps"] for s in ok]  # type: ignore[index]
        ms = [s.results["median_ms"] for s in ok]  # type: ignore[index]
        t.add_row(label, ", ".join(s.info.config for s in ss), f"{len(ok)}/{len(ss)}",
                  gbps_short(statistics.median(gb)) if gb else "-", gbps_short(max(gb)) if gb else "-",
                  ms_short(statistics.median(ms)) if ms else "-")
    return t


# ----------------------------------------------------------------------------- watching

def watch(run_dirs: Sequence[Path], console: Console, poll_s: float, title: str | None = None) -> list[Snapshot]:
    """Poll until every run is over; returns the last snapshots. Ctrl-C raises KeyboardInterrupt."""
    unknown: dict[Path, int] = {}

    def over(snaps: list[Snapshot]) -> bool:
        for s in snaps:
            unknown[s.run_dir] = unknown.get(s.run_dir, 0) + 1 if s.state.state == "UNKNOWN" else 0
        return all(s.state.final and (s.state.state != "UNKNOWN" or unknown[s.run_dir] >= _UNKNOWN_POLLS)
                   for s in snaps)

    def render(snaps: list[Snapshot]) -> Any:
        return run_view(snaps[0]) if title is None else sweep_table(snaps, title)

    snaps = snapshots(run_dirs)
    if console.is_terminal:
        with Live(render(snaps), console=console, refresh_per_second=4, transient=True) as live:
            while not over(snaps):
                time.sleep(poll_s)
                snaps = snapshots(run_dirs)
                live.update(render(snaps))
        for s in snaps:
            console.print(status_line(s), highlight=False, markup=False)
        return snaps
    last: dict[Path, str] = {}
    while True:
        for s in snaps:
            line = status_line(s)
            key = _ELAPSED.sub("", line)  # a phase's clock ticking is not a change worth a line
            if last.get(s.run_dir) != key:
                console.print(f"[{time.strftime('%H:%M:%S')}] {line}", highlight=False, markup=False)
                last[s.run_dir] = key
        if over(snaps):
            return snaps
        time.sleep(poll_s)
        snaps = snapshots(run_dirs)
