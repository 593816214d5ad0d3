"""Reports people look at: charts of runs and sweeps as PNG, and one self-contained HTML page.

Pure functions from data to pictures: a `RunData` (what ran, how it ended, its results.json and
plan.json as plain JSON) becomes matplotlib figures, PNG bytes, and an HTML page whose images are
embedded as base64, so it opens offline. Reading run directories is orchestrator/commands/report.py's job.

matplotlib is imported only here, only when a figure is drawn, and only its object-oriented API
(Figure + the Agg canvas): no pyplot state, no display. Without it, `need_matplotlib()` raises
one line saying how to install it.
"""

from __future__ import annotations

import base64
import errno
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from refit_core.numbers import gbps_exact, human_bytes, ms_exact, plain_number, short_bytes
from refit_core.errors import ConfigError, RefitError
from refit_core.jsonfile import SymlinkRefused, write_file as write_nofollow

if TYPE_CHECKING:
    from matplotlib.figure import Figure



def has_link_model(method: object) -> bool:
    """Whether the link model (NVLink, network adapters) describes this method's transfers: not gloo on the CPU."""
    from refit_core.planning.methods import METHODS

    m = METHODS.get(method) if isinstance(method, str) else None
    return m is not None and m.ceiling is not None
NETWORK_COLOR, LOCAL_COLOR, OUT_COLOR, WARMUP_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c", "#b0b0b0"
ANNOTATE_CELLS = 144  # write the bytes into each cell of matrices up to 12 x 12


class MissingDependencyError(RefitError):
    """An optional package a command needs is not installed."""


def need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise MissingDependencyError("plots need matplotlib, which is not installed: "
                                     "pip install 'refitctl[report]'") from None


def _figure(width: float, height: float) -> "Figure":
    need_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


@dataclass(frozen=True)
class RunData:
    """One run as a report shows it."""

    name: str
    run_dir: str
    config: str
    mode: str
    method: str  # as shown: "nccl", or "gloo (for nvshmem)" when gloo stood in on a machine without GPUs
    state: str
    verified: bool
    results: Mapping[str, Any]  # results.json
    plan: Mapping[str, Any]  # plan.json (`refitctl plan --json`)

    @property
    def layouts(self) -> str:
        return f"{layout_text(self.plan['source_layout'])} -> {layout_text(self.plan['destination_layout'])}"

    @property
    def median_ms(self) -> float | None:
        return self.results.get("median_ms")

    @property
    def timed_ms(self) -> list[float]:
        return [i["time_ms"] for i in self.results.get("iterations", []) if not i.get("warmup")]

    @property
    def payload(self) -> str:
        """What was refit: refitctl's synthetic shards, or Megatron-Core GPTModels built on the ranks
        (--payload megatron through refitctl's library, or a megatron-* method's own refit): two
        runs on models refit the same parameters, so compare sets them side by side fairly."""
        t = self.results.get("transport") or {}
        if t.get("peer") or t.get("payload"):
            return "Megatron-Core GPTModels" + (" (Megatron-Core's refit)" if t.get("peer") else " (refitctl's library)")
        return "synthetic shards"

    @property
    def bound_ms(self) -> float | None:
        """The results' own bound if they carry one, else the link model's, for GPU methods only:
        the model describes NVLink and network adapters, not gloo between CPU processes."""
        if self.results.get("bound_ms") is not None:
            return float(self.results["bound_ms"])
        pred = self.plan.get("predicted") or {}
        if has_link_model(self.plan.get("method")) and pred.get("bound_s"):
            return pred["bound_s"] * 1e3
        return None

    @property
    def predicted_ms(self) -> float | None:
        pred = self.plan.get("predicted") or {}
        if has_link_model(self.plan.get("method")) and pred.get("time_s"):
            return pred["time_s"] * 1e3
        return None



def layout_text(lay: Mapping[str, Any]) -> str:
    return f"TP={lay['tp']},EP={lay['ep']}" + (f",PP={lay['pp']}" if lay.get("pp", 1) > 1 else "")


def png_bytes(fig: "Figure") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _bytes_axis(axis: Any, vmax: float) -> None:
    """Ticks at round numbers of one binary unit (0, 2, 4, 6 MiB), labelled with it."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    k = 0
    while k < 4 and vmax >= 1024 ** (k + 1):
        k += 1
    unit, name = 1024 ** k, ("B", "KiB", "MiB", "GiB", "TiB")[k]

    class BinaryLocator(MaxNLocator):
        def tick_values(self, vmin: float, vmax: float) -> Any:
            return super().tick_values(vmin / unit, vmax / unit) * unit

    axis.set_major_locator(BinaryLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / unit:g} {name}" if v else "0"))



def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_axis_off()


# ----------------------------------------------------------------------------- one run

def iteration_figure(run: RunData) -> "Figure":
    """Time of every iteration (slowest rank), warm-ups greyed and hatched, the median and the bound."""
    its = list(run.results.get("iterations", []))
    fig = _figure(max(6.0, min(14.0, 3.0 + 0.25 * len(its))), 3.4)
    ax = fig.add_subplot()
    ax.set_title(f"{run.name}: time per iteration ({run.method})", fontsize=11)
    if not its:
        _empty(ax, "no iteration finished")
        return fig
    warm = [k for k, i in enumerate(its) if i.get("warmup")]
    timed = [k for k, i in enumerate(its) if not i.get("warmup")]
    if warm:
        ax.bar(warm, [its[k]["time_ms"] for k in warm], color=WARMUP_COLOR, hatch="//", edgecolor="white",
               label="warm-up (not timed)")
    if timed:
        ax.bar(timed, [its[k]["time_ms"] for k in timed], color=NETWORK_COLOR, label="timed")
    if run.median_ms is not None:
        ax.axhline(run.median_ms, color="#d62728", ls="--", lw=1.2, label=f"median {plain_number(run.median_ms)} ms")
    if run.bound_ms is not None:
        ax.axhline(run.bound_ms, color="black", ls=":", lw=1.2, label=f"bound {plain_number(run.bound_ms)} ms")
    labels, w = [], 0
    for i in its:
        w += bool(i.get("warmup"))
        labels.append(f"w{w}" if i.get("warmup") else str(i["iteration"]))
    step = max(1, len(its) // 30)
    ax.set_xticks(range(0, len(its), step), labels[::step])
    ax.set_xlabel("iteration (w: warm-up)")
    ax.set_ylabel("time (ms, slowest rank)")
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def transfer_matrix(plan: Mapping[str, Any]) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
    """(source ranks, destination ranks, network bytes[s][d], local-copy bytes[s][d]) from a plan's pairs."""
    srcs, dsts = list(plan["source_ranks"]), list(plan["destination_ranks"])
    si, di = {r: k for k, r in enumerate(srcs)}, {r: k for k, r in enumerate(dsts)}
    net = [[0] * len(dsts) for _ in srcs]
    loc = [[0] * len(dsts) for _ in srcs]
    for p in plan["pairs"]:
        (loc if p["local"] else net)[si[p["src"]]][di[p["dst"]]] += p["bytes"]
    return srcs, dsts, net, loc


def transfer_figure(plan: Mapping[str, Any], title: str) -> "Figure":
    """Heatmap of bytes from each source rank (rows) to each destination rank (columns).

    Network transfers are blue, local copies (collocated mode: a rank keeps what it already holds)
    orange, each with its own colour bar; empty cells are grey.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib import colormaps

    srcs, dsts, net_l, loc_l = transfer_matrix(plan)
    net, loc = np.array(net_l, dtype=float), np.array(loc_l, dtype=float)
    fig = _figure(min(13.0, max(5.5, 3.8 + 0.42 * len(dsts))), min(11.0, max(3.4, 1.9 + 0.36 * len(srcs))))
    ax = fig.add_subplot()
    ax.set_facecolor("#eeeeee")
    shown = []
    for m, cmap_name, label in ((net, "Blues", "network"), (loc, "Oranges", "local copy")):
        if not m.any():
            continue
        cmap = ListedColormap(colormaps[cmap_name](np.linspace(0.3, 1.0, 256)))
        im = ax.imshow(np.ma.masked_equal(m, 0), cmap=cmap, norm=Normalize(0, m.max()), aspect="auto",
                       interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
        cb.set_label(f"{label} bytes", fontsize=8)
        _bytes_axis(cb.ax.yaxis, m.max())
        cb.ax.tick_params(labelsize=7)
        shown.append((m, label))
    if not shown:
        ax.imshow(np.zeros_like(net), cmap=ListedColormap(["#eeeeee"]), aspect="auto")
    if len(srcs) * len(dsts) <= ANNOTATE_CELLS:
        for m, label in shown:
            for s, d in zip(*np.nonzero(m)):
                ax.text(d, s, short_bytes(m[s, d]) + ("\nlocal" if label == "local copy" else ""), ha="center",
                        va="center", fontsize=7, color="white" if m[s, d] > 0.55 * m.max() else "black")
    for axis, ranks in ((ax.xaxis, dsts), (ax.yaxis, srcs)):
        step = max(1, len(ranks) // 24)
        axis.set_ticks(range(0, len(ranks), step), [str(r) for r in ranks[::step]], fontsize=8)
    ax.set_xlabel("destination rank")
    ax.set_ylabel("source rank")
    ax.set_title(f"{title}: bytes per (source, destination)\nnetwork {short_bytes(plan['network_bytes'])}, "
                 f"local copies {short_bytes(plan['local_bytes'])}", fontsize=10)
    return fig


def rank_bytes_figure(plan: Mapping[str, Any], title: str) -> "Figure":
    """Bytes each active rank receives and sends over the network, and copies locally."""
    idle = set(plan.get("idle_ranks", []))
    per = plan["per_rank"]
    ranks = sorted(int(r) for r in per if int(r) not in idle)
    srcs, dsts = set(plan["source_ranks"]), set(plan["destination_ranks"])
    fig = _figure(min(14.0, max(6.0, 2.5 + 0.5 * len(ranks))), 3.4)
    ax = fig.add_subplot()
    series = [("bytes_in", "in (network)", NETWORK_COLOR), ("bytes_out", "out (network)", OUT_COLOR),
              ("bytes_local", "local copy", LOCAL_COLOR)]
    series = [s for s in series if any(per[str(r)][s[0]] for r in ranks)] or series[:1]
    w = 0.8 / len(series)
    for k, (key, label, color) in enumerate(series):
        ax.bar([r + (k - (len(series) - 1) / 2) * w for r in ranks], [per[str(r)][key] for r in ranks], w,
               color=color, label=label)
    role = {(True, True): "src+dst", (True, False): "src", (False, True): "dst"}
    if len(ranks) <= 16:
        ax.set_xticks(ranks, [f"{r}\n{role.get((r in srcs, r in dsts), '')}" for r in ranks], fontsize=8)
    _bytes_axis(ax.yaxis, max((per[str(r)][s[0]] for r in ranks for s in series), default=1))
    ax.set_xlabel("rank")
    ax.set_ylabel("bytes")
    extra = f" (idle ranks {_ranges(sorted(idle))} not shown)" if idle else ""
    ax.set_title(f"{title}: bytes per rank{extra}", fontsize=10)
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _ranges(xs: Sequence[int]) -> str:
    """'3-7' for [3, 4, 5, 6, 7]; '1,3-4' for [1, 3, 4]."""
    groups: list[list[int]] = []
    for x in xs:
        if groups and x == groups[-1][1] + 1:
            groups[-1][1] = x
        else:
            groups.append([x, x])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in groups)


# ----------------------------------------------------------------------------- many runs

def _sweep_bars(ax_t: Any, ax_g: Any, r: RunData, x: float, w: float, color: str, legend: dict[str, Any],
                values_t: list[float], values_g: list[float]) -> None:
    """One run's bars in both panels (time, GB/s), its bound, and the values the axes must show."""
    if r.median_ms is None:
        ax_t.text(x, 0.02, f"{r.state.lower()}\nno result", transform=ax_t.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=7, color="#d62728")
        return
    hatch = None if r.verified else "xx"
    times = r.timed_ms or [r.median_ms]
    lo, hi = min(times), max(times)
    bar = ax_t.bar(x, r.median_ms, w * 0.92, color=color, hatch=hatch, edgecolor="white",
                   yerr=[[r.median_ms - lo], [hi - r.median_ms]], capsize=3, error_kw={"lw": 0.8})
    legend.setdefault(r.method, bar)
    ax_t.bar_label(bar, [plain_number(r.median_ms)], fontsize=7, padding=2)
    values_t += [lo, hi]
    gbps, delivered = r.results.get("GBps"), r.results.get("delivered_bytes")
    if gbps and delivered and lo > 0:
        g_lo, g_hi = delivered / (hi * 1e6), delivered / (lo * 1e6)
        gb = ax_g.bar(x, gbps, w * 0.92, color=color, hatch=hatch, edgecolor="white",
                      yerr=[[gbps - g_lo], [g_hi - gbps]], capsize=3, error_kw={"lw": 0.8})
        ax_g.bar_label(gb, [plain_number(gbps)], fontsize=7, padding=2)
        values_g += [g_lo, g_hi]
    if not r.verified:
        legend.setdefault("not verified", ax_t.bar(x, 0, 0, color="white", hatch="xx", edgecolor="#666666"))
    if r.bound_ms is not None:
        legend.setdefault("bound (link model)", ax_t.hlines(r.bound_ms, x - w / 2, x + w / 2, colors="black",
                                                            linestyles="--", lw=1.2))
        values_t.append(r.bound_ms)
        if delivered:
            bound_g = delivered / (r.bound_ms * 1e6)
            ax_g.hlines(bound_g, x - w / 2, x + w / 2, colors="black", linestyles="--", lw=1.2)
            values_g.append(bound_g)


def sweep_figure(runs: Sequence[RunData], title: str = "Refit by config and method") -> "Figure":
    """Median time (whiskers: fastest to slowest timed iteration) and GB/s of every run, grouped by
    config, coloured by method; dashed: the bound where known. Runs without a result are named."""
    configs = list(dict.fromkeys(r.config for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    color = {m: f"C{k % 10}" for k, m in enumerate(methods)}
    slots = {c: [r for r in runs if r.config == c] for c in configs}
    per = max(len(v) for v in slots.values())
    w = 0.8 / per
    fig = _figure(min(16.0, max(7.0, 1.2 + 0.9 * len(configs) * (1 + 0.4 * (per - 1)))), 6.4)
    ax_t, ax_g = fig.subplots(2, 1, sharex=True)
    legend: dict[str, Any] = {}
    values_t: list[float] = []
    values_g: list[float] = []
    for c_idx, c in enumerate(configs):
        for k, r in enumerate(slots[c]):
            x = c_idx + (k - (len(slots[c]) - 1) / 2) * w
            _sweep_bars(ax_t, ax_g, r, x, w, color[r.method], legend, values_t, values_g)
    for ax, values, label in ((ax_t, values_t, "median time (ms)"), (ax_g, values_g, "GB/s delivered")):
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_yscale("log")
            ax.set_ylim(top=max(positive) * 2)
        else:
            ax.set_ylim(0, max(positive, default=1) * 1.18)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    lay = {c: slots[c][0].layouts.replace(" -> ", "\n-> ") for c in configs}
    ax_g.set_xticks(range(len(configs)), [f"{c}\n{lay[c]}" for c in configs], fontsize=7.5,
                    rotation=25 if len(configs) > 6 else 0, ha="right" if len(configs) > 6 else "center")
    fig.suptitle(f"{title}\nmedian of the timed iterations; whiskers: fastest to slowest iteration", fontsize=10)
    order = [m for m in methods if m in legend] + [k for k in legend if k not in methods]
    fig.legend([legend[k] for k in order], order, fontsize=8, loc="outside lower center", ncols=min(len(legend), 5),
               frameon=False)
    return fig


# ----------------------------------------------------------------------------- HTML

@dataclass(frozen=True)
class RunImages:
    iterations: bytes
    transfers: bytes
    rank_bytes: bytes


def run_images(run: RunData) -> RunImages:
    return RunImages(png_bytes(iteration_figure(run)), png_bytes(transfer_figure(run.plan, run.name)),
                     png_bytes(rank_bytes_figure(run.plan, run.name)))



def _bytes(v: int | None) -> str:
    return "-" if v is None else f"{v:,} ({human_bytes(v)})"


def _cell(key: str, value: Any, text: str) -> str:
    raw = "" if value is None else str(value)
    return f'<td data-key="{key}" data-value="{html.escape(raw)}">{html.escape(text)}</td>'


def _img(png: bytes, alt: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def summary_fields(run: RunData) -> list[tuple[str, str, Any, str]]:
    """(key, label, raw value, text) of one run, as the page's tables show them."""
    res, plan = run.results, run.plan
    warm = res.get("warmup_ms") or []
    return [
        ("config", "config", run.config, run.config),
        ("mode", "mode", run.mode, run.mode),
        ("method", "method", run.method, run.method),
        ("layouts", "source -> destination", run.layouts, run.layouts),
        ("payload", "payload", run.payload.split(" (")[0], run.payload),
        ("state", "state", run.state, run.state),
        ("verified", "verified", run.verified, "yes" if run.verified else "no"),
        ("timed_iterations", "timed iterations", res.get("timed_iterations"), str(res.get("timed_iterations", "-"))),
        ("warmup_ms", "warm-up ms", warm[0] if warm else None, ", ".join(ms_exact(v) for v in warm) or "-"),
        ("median_ms", "median ms", run.median_ms, ms_exact(run.median_ms)),
        ("min_ms", "min ms", res.get("min_ms"), ms_exact(res.get("min_ms"))),
        ("GBps", "GB/s (at the median)", res.get("GBps"), gbps_exact(res.get("GBps"))),
        ("delivered_bytes", "bytes delivered", res.get("delivered_bytes"), _bytes(res.get("delivered_bytes"))),
        ("network_bytes", "network bytes", plan.get("network_bytes"), _bytes(plan.get("network_bytes"))),
        ("local_bytes", "local copy bytes", plan.get("local_bytes"), _bytes(plan.get("local_bytes"))),
        ("transfers", "transfers in the plan", plan.get("transfers"), str(plan.get("transfers", "-"))),
        ("predicted_ms", "predicted ms (link model)", run.predicted_ms, ms_exact(run.predicted_ms)),
        ("bound_ms", "bound ms", run.bound_ms, ms_exact(run.bound_ms)),
    ]


_SUMMARY_COLUMNS = ("config", "mode", "method", "layouts", "state", "verified", "median_ms", "min_ms", "GBps",
                    "delivered_bytes", "bound_ms")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
td[data-value]{font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.8em 0}
.charts{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start}
.charts>img{flex:0 1 560px;min-width:0;height:auto}.charts>img.wide{flex-basis:100%}.note{color:#666;font-size:.9em}
.bad{color:#b00020;font-weight:600}.ok{color:#1b7f2a;font-weight:600}
code{background:#f4f4f4;padding:0 .2em}
"""


def _summary_table(runs: Sequence[RunData]) -> str:
    fields = [{k: (raw, text) for k, _, raw, text in summary_fields(r)} for r in runs]
    labels = {k: label for k, label, _, _ in summary_fields(runs[0])}
    head = "<tr><th>run</th>" + "".join(f"<th>{html.escape(labels[k])}</th>" for k in _SUMMARY_COLUMNS) + "</tr>"
    rows = []
    for r, f in zip(runs, fields):
        cells = "".join(_cell(k, *f[k]) for k in _SUMMARY_COLUMNS)
        rows.append(f'<tr data-run="{html.escape(r.name)}"><td><a href="#{_anchor(r)}">{html.escape(r.name)}</a>'
                    f"</td>{cells}</tr>")
    return f'<table class="summary">{head}{"".join(rows)}</table>'


def _anchor(r: RunData) -> str:
    return "run-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r.run_dir)


def _iteration_table(run: RunData) -> str:
    its = run.results.get("iterations", [])
    phases = sorted({k for i in its for k in (i.get("phases_ms") or {})})
    head = "<tr><th>iteration</th><th>time ms</th><th>GB/s</th>" + "".join(
        f"<th>{html.escape(p)} ms</th>" for p in phases) + "<th>launches</th></tr>"
    rows = []
    for i in its:
        label = "warm-up" if i.get("warmup") else str(i["iteration"])
        rows.append(f"<tr><td>{label}</td>{_cell('time_ms', i['time_ms'], ms_exact(i['time_ms']))}"
                    f"{_cell('GBps', i.get('GBps'), gbps_exact(i.get('GBps')))}"
                    + "".join(_cell(p, (i.get('phases_ms') or {}).get(p), ms_exact((i.get('phases_ms') or {}).get(p)))
                              for p in phases)
                    + f"<td>{i.get('launches', '')}</td></tr>")
    return (f"<details><summary>per-iteration timings ({len(its)} rows)</summary>"
            f'<table class="iterations">{head}{"".join(rows)}</table></details>')


def _run_section(run: RunData, images: RunImages) -> str:
    rows = "".join(f"<tr><th>{html.escape(label)}</th>{_cell(k, raw, text)}</tr>"
                   for k, label, raw, text in summary_fields(run))
    verdict = '<span class="ok">verified</span>' if run.verified else '<span class="bad">NOT verified</span>'
    problems = [*run.results.get("problems", []), *(f"rank {k}: {v}" for k, v in run.results.get("errors", {}).items())]
    notes = "".join(f'<p class="bad">{html.escape(p.splitlines()[0] if p else p)}</p>' for p in problems[:5])
    wide = max(len(run.plan["source_ranks"]), len(run.plan["destination_ranks"])) > 16
    return (f'<section id="{_anchor(run)}" data-run="{html.escape(run.name)}">'
            f"<h2>{html.escape(run.name)} &middot; {verdict}</h2>"
            f'<p class="note">run directory <code>{html.escape(run.run_dir)}</code></p>{notes}'
            f'<div class="charts"><table class="run">{rows}</table>'
            f'{_img(images.iterations, f"{run.name}: time per iteration")}'
            f'{_img(images.transfers, f"{run.name}: transfer matrix", wide)}'
            f'{_img(images.rank_bytes, f"{run.name}: bytes per rank", wide)}</div>'
            f"{_iteration_table(run)}</section>")


def report_html(title: str, runs: Sequence[RunData], images: Sequence[RunImages], sweep_png: bytes | None,
                generated: str) -> str:
    """The whole page: summary table, the sweep chart (several runs), then one section per run."""
    bound_note = ("Bound: the run's own <code>bound_ms</code> if its results carry one, else the link model's "
                  "lower bound (<code>refitctl plan</code>) for GPU methods; gloo runs on CPUs have none.")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="note">generated {html.escape(generated)} by <code>refitctl report</code>; '
             f"{len(runs)} run{'s' if len(runs) != 1 else ''}. {bound_note}</p>",
             _summary_table(runs)]
    if sweep_png is not None:
        parts.append(_img(sweep_png, "time and GB/s by config and method"))
    parts.extend(_run_section(r, im) for r, im in zip(runs, images))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_file(path: Path, data: bytes) -> None:
    try:
        if path.parent.is_symlink():
            raise SymlinkRefused(errno.ELOOP, "is a symbolic link: refitctl writes no report through one "
                                 "(remove it, or give -o)", str(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nofollow(path, data)
    except SymlinkRefused as e:
        raise ConfigError(f"{e.filename} {e.strerror}") from None
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


def write_plan_png(path: Path, plan: dict[str, Any], title: str) -> None:
    """`refitctl plan --png FILE`: the transfer matrix heatmap of a plan, nothing run."""
    need_matplotlib()
    write_file(path, png_bytes(transfer_figure(plan, title)))
