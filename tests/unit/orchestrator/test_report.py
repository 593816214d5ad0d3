"""refitctl report / compare / plan --png on real run directories.

One small sweep (a non-collocated and a collocated config, gloo, 4 local processes) runs once
through `refitctl sweep --cluster local`; every test reads its directories. About 45 s on 2 cores.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ROOT, SMALL_FLAGS
from orchestrator.cli import main

pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

SMALL = [a for k, v in SMALL_FLAGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", "sweep",
           "config-4,collocated-4", "--cluster", "local", "--gpus", "4", "--refit-method", "gloo",
           "--num-benchmark-iterations", "2", "--poll", "0.5", *SMALL]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "REFITCTL_RUNS_DIR": str(runs), "COLUMNS": "160"})
    assert p.returncode == 0, p.stdout + p.stderr
    (d,) = [d for d in runs.iterdir() if (d / "sweep.json").is_file()]
    return d


def run_dirs(sweep_dir: Path) -> dict[str, Path]:
    data = json.loads((sweep_dir / "sweep.json").read_text())
    return {name: sweep_dir / dirs[-1] for name, dirs in data["runs"].items()}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_png(data: bytes, where: Path | str) -> None:
    assert data[:8] == PNG_MAGIC and len(data) > 1000, where


def assert_png_file(path: Path) -> None:
    assert_png(path.read_bytes(), path)
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, path


class Page(HTMLParser):
    """The images, and every table cell marked with data-key (with its row's data-run, if any)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[tuple[str | None, str, str, str]] = []  # (run, key, data-value, text)
        self._run: str | None = None
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"] or "")
        elif tag in ("tr", "section") and "data-run" in a:
            self._run = a["data-run"]
        elif tag == "td" and "data-key" in a:
            self._cell, self._text = (a["data-key"] or "", a.get("data-value") or ""), []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append((self._run, *self._cell, "".join(self._text)))
            self._cell = None

    def value(self, run: str, key: str) -> tuple[str, str]:
        found = [(v, t) for r, k, v, t in self.cells if r == run and k == key]
        assert found, (run, key)
        return found[0]


def parse(html_path: Path) -> Page:
    page = Page()
    page.feed(html_path.read_text())
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]), html_path)
    return page


def test_sweep_report_writes_pngs_and_a_self_contained_page(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(sweep)]) == 0
    out = sweep / "report"
    assert str(out / "report.html") in capsys.readouterr().out.replace("\n", "")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["sweep.png", *(f"{n}-{k}.png" for n in ("config-4", "collocated-4")
                                          for k in ("iterations", "transfers", "rank-bytes"))])
    for name in pngs:
        assert_png_file(out / name)
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    page = parse(out / "report.html")
    assert len(page.images) == 1 + 3 * 2
    for name, d in run_dirs(sweep).items():
        res = results(d)
        raw, shown = page.value(name, "median_ms")
        assert float(raw) == res["median_ms"] and shown == f"{res['median_ms']:.3f}"
        raw, shown = page.value(name, "GBps")
        assert float(raw) == res["GBps"] and shown == f"{res['GBps']:.4f}"
        assert page.value(name, "delivered_bytes")[0] == str(res["delivered_bytes"])
        assert page.value(name, "verified")[1] == "yes"
        assert page.value(name, "method")[1] == "gloo"
    assert page.value("collocated-4", "local_bytes")[0] != "0"  # collocated: local copies
    assert page.value("config-4", "local_bytes")[0] == "0"


def test_run_report_goes_into_the_run_directory(sweep: Path) -> None:
    d = run_dirs(sweep)["collocated-4"]
    assert main(["report", str(d)]) == 0
    for name in ("iterations.png", "transfers.png", "rank-bytes.png"):
        assert_png_file(d / "report" / name)
    page = parse(d / "report" / "report.html")
    assert len(page.images) == 3
    res = results(d)
    assert float(page.value("collocated-4", "min_ms")[0]) == res["min_ms"]
    assert page.value("collocated-4", "timed_iterations")[1] == "2"
    times = [float(v) for _, k, v, _ in page.cells if k == "time_ms"]
    assert times == [i["time_ms"] for i in res["iterations"]]  # warm-up first, then the timed ones


def test_bare_job_directory_is_reported_from_its_config(sweep: Path, tmp_path: Path) -> None:
    """A directory `python -m jobs.refit_job DIR` leaves (no run.json, no plan.json) still reports."""
    src = run_dirs(sweep)["config-4"]
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "results.json"):
        shutil.copy(src / f, bare / f)
    shutil.copytree(src / "ranks", bare / "ranks")
    assert main(["report", str(bare), "-o", str(tmp_path / "out")]) == 0
    page = parse(tmp_path / "out" / "report.html")
    assert float(page.value("bare", "median_ms")[0]) == results(src)["median_ms"]
    assert page.value("bare", "network_bytes")[0] == str(results(src)["delivered_bytes"])


def test_compare_prints_both_runs_and_the_ratio(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = run_dirs(sweep)
    a, b = results(dirs["config-4"]), results(dirs["collocated-4"])
    assert main(["compare", str(dirs["config-4"]), str(dirs["collocated-4"])]) == 0
    out = capsys.readouterr().out
    for label in ("median ms", "GB/s", "bytes delivered", "local copy bytes", "method"):
        assert label in out, label
    assert f"{a['median_ms']:.3f}" in out and f"{b['median_ms']:.3f}" in out
    assert f"{b['median_ms'] / a['median_ms']:.3f}x" in out
    assert f"{b['delivered_bytes'] / a['delivered_bytes']:.3f}x" in out


def test_plan_png_needs_no_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "plots" / "collocated-1.png"
    assert main(["plan", "collocated-1", *SMALL, "--png", str(png)]) == 0
    assert_png_file(png)
    assert "Transfer matrix heatmap" in capsys.readouterr().out
    assert main(["plan", "config-4", *SMALL, "--json", "--png", str(tmp_path / "c4.png")]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "config-4"  # stdout stays one JSON object
    assert_png_file(tmp_path / "c4.png")


def one_line_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refitctl: error: ") and "\n" not in err, err
    return err


def test_missing_or_damaged_directories_are_one_line(sweep: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-run"
    assert str(missing) in one_line_error(capsys, "report", str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in one_line_error(capsys, "report", str(empty))
    assert str(empty) in one_line_error(capsys, "compare", str(empty), str(missing))
    damaged = tmp_path / "damaged"
    # without its summary.json (a run finalized before summaries existed): the report reads results.json
    shutil.copytree(run_dirs(sweep)["config-4"], damaged, ignore=shutil.ignore_patterns("report", "summary.json"))
    (damaged / "results.json").write_text('{"iterations": [')
    assert str(damaged / "results.json") in one_line_error(capsys, "report", str(damaged))
    (damaged / "run.json").write_text("{not json")
    assert str(damaged / "run.json") in one_line_error(capsys, "report", str(damaged))
    assert "is a sweep" in one_line_error(capsys, "compare", str(sweep), str(damaged))


def test_without_matplotlib_report_says_how_to_install(sweep: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    err = one_line_error(capsys, "report", str(sweep))
    assert "pip install 'refitctl[report]'" in err
    assert "pip install 'refitctl[report]'" in one_line_error(capsys, "plan", "config-4", "--png", "x.png")
    dirs = run_dirs(sweep)
    assert main(["compare", str(dirs["config-4"]), str(dirs["collocated-4"])]) == 0  # tables need no matplotlib


def test_sweep_chart_draws_the_bound_of_gpu_methods(sweep: Path) -> None:
    """NCCL against NVSHMEM, each against the link model's bound: pure functions, made-up GPU runs."""
    from orchestrator.views.report import png_bytes, report_html, run_images, sweep_figure
    from orchestrator.commands.report import load_run_data

    base = load_run_data(run_dirs(sweep)["config-4"])
    runs = [dataclasses.replace(base, method=m, plan={**base.plan, "method": m}) for m in ("nccl", "nvshmem")]
    runs.append(dataclasses.replace(base, config="config-5", method="nccl", state="FAILED", verified=False,
                                    results={"iterations": []}))
    assert base.bound_ms is None  # gloo on CPUs: the link model does not apply
    bound = base.plan["predicted"]["bound_s"] * 1e3
    assert runs[0].bound_ms == pytest.approx(bound) and runs[2].median_ms is None
    assert_png(png_bytes(sweep_figure(runs)), "sweep figure")
    page = Page()
    page.feed(report_html("t", runs, [run_images(r) for r in runs], None, "now"))
    assert float(page.value("config-4", "bound_ms")[0]) == pytest.approx(bound)
