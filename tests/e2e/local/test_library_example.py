"""docs/library.md's example runs as written: examples/rl_loop_refit.py, two CPU processes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

mb = pytest.importorskip("refit_core.peers.megatron_build")


@pytest.mark.skipif(mb.megatron_core() is None, reason="megatron-core not installed ('refitctl[megatron]')")
def test_rl_loop_example_refits_every_step() -> None:
    p = subprocess.run([sys.executable, "examples/rl_loop_refit.py"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 3
    for step, line in enumerate(lines):
        # each step's new weight (ones + step + 1) reached the served model, every moved byte checked
        assert re.fullmatch(rf"step {step}: refit [\d.]+ ms \(moving [\d.]+ ms, checking [\d.]+ ms, 33 transfers\), "
                            rf"served weight {step + 2}", line), line
    assert "```python" not in p.stdout
    doc = (ROOT / "docs" / "library.md").read_text()
    assert "examples/rl_loop_refit.py" in doc
