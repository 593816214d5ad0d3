"""Pieces small enough to read in one sitting: no function or method in refit_core/, orchestrator/ or jobs/ is
longer than 60 lines (its `def` to its last line, docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LIMIT = 60


def long_functions(root: Path) -> list[str]:
    out = []
    for d in ("refit_core", "orchestrator", "jobs"):
        for path in sorted((root / d).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > LIMIT:
                        out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_is_longer_than_60_lines() -> None:
    assert long_functions(ROOT) == []


def test_a_long_function_is_found(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(LIMIT))
    (tmp_path / "jobs" / "a.py").write_text(f"def fine():\n    pass\n\n\ndef long():\n{body}")
    assert long_functions(tmp_path) == [f"jobs/a.py:5 long ({LIMIT + 1} lines)"]
