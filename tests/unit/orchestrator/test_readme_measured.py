"""The README's measured table is what benchmarks/results/ says (scripts/readme_measured.py)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import readme_measured  # noqa: E402


def test_readme_table_matches_the_result_files() -> None:
    text = (ROOT / "README.md").read_text()
    assert readme_measured.rewrite(text) == text, "README is stale: run python scripts/readme_measured.py"


def test_every_quoted_row_is_verified() -> None:
    assert "| NO |" not in readme_measured.table()
