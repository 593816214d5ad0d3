"""How refitctl writes numbers for people, in one place: bytes, GiB, milliseconds, GB/s.

Used by the memory fit's errors (refit_core/planning/memory.py) and by every view (orchestrator/views/:
the plan, the live status, the reports), so a figure reads the same wherever it is shown."""

from __future__ import annotations

import math

GIB = 1 << 30


def human_bytes(n: float) -> str:
    """'512 B', '2.58 MiB', '1.41 GiB': binary units, two decimals (tables, plan lines)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def short_bytes(n: float) -> str:
    """Three significant digits: '768 KiB', '2.58 MiB' (figure cells and labels are small)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1000 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def gib(n: int) -> str:
    """'79.07 GiB': a GPU's memory and what fits in it."""
    return f"{n / GIB:.2f} GiB"


def plain_number(v: float) -> str:
    """Three significant digits without scientific notation: 0.0123, 4.56, 789, 1,140, 52,300."""
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(v))))
    return f"{v:.{digits}f}"


def ms_short(v: float | None) -> str:
    """A time in ms for the live status: '1,234.5'; '-' when unknown."""
    return "-" if v is None else f"{v:,.1f}"


def gbps_short(v: float | None) -> str:
    """GB/s for the live status: '12.345'; '-' when unknown."""
    return "-" if v is None else f"{v:.3f}"


def ms_exact(v: float | None) -> str:
    """A time in ms for reports, to the microsecond: '1.688'; '-' when unknown."""
    return "-" if v is None else f"{v:.3f}"


def gbps_exact(v: float | None) -> str:
    """GB/s for reports: '12.3456'; '-' when unknown."""
    return "-" if v is None else f"{v:.4f}"


def format_time(seconds: float) -> str:
    """A duration as a clock shows it: `4:05`, `1:02:03` (a time limit, time since submission)."""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
