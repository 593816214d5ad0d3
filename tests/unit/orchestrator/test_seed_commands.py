"""docs/seed-commands.md: every seed command in full, each one accepted verbatim by `refitctl plan`."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator.cli import main

sys.path.insert(0, str(ROOT / "scripts"))
import seed_commands  # noqa: E402

DOC = ROOT / "docs" / "seed-commands.md"
SEED = seed_commands.find_seed()


def _blocks() -> dict[str, list[str]]:
    """config name -> argv of the command under its heading."""
    text = DOC.read_text()
    out = {}
    for name, body in re.findall(r"^## (\S+): .*?```bash\n(.*?)```", text, flags=re.S | re.M):
        argv = shlex.split(body.replace("\\\n", " "))
        assert argv[:2] == ["refitctl", "submit"], argv[:2]
        out[name] = argv[2:]
    return out


def test_doc_is_what_the_script_writes() -> None:
    seed = SEED.read_text() if SEED else None
    if seed is None:
        pytest.skip("the seed document (shared/seed/8GPU_CONFIGS.md) is not beside this checkout")
    assert DOC.read_text() == seed_commands.render(seed), "run: python scripts/seed_commands.py > docs/seed-commands.md"


def test_every_seed_config_has_its_command_once() -> None:
    assert list(_blocks()) == list(seed_commands.SWEEPS["8gpu"])


@pytest.mark.parametrize("name", list(seed_commands.SWEEPS["8gpu"]))
def test_command_plans_exactly_as_the_named_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _blocks()[name]
    assert main(["plan", *argv, "--json"]) == 0
    by_flags = json.loads(capsys.readouterr().out)
    assert main(["plan", name, "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    for key in ("pairs", "model", "source_ranks", "destination_ranks", "idle_ranks", "per_rank"):
        assert by_flags[key] == by_name[key], key


@pytest.mark.parametrize("name", list(seed_commands.SEED_SPELLED_OUT))
def test_spelled_out_commands_are_the_seeds_text(name: str) -> None:
    if SEED is None:
        pytest.skip("the seed document is not beside this checkout")
    lines = seed_commands.seed_block(SEED.read_text(), seed_commands.SEED_SPELLED_OUT[name])
    assert lines[0] == "./benchmark_refit_sbatch.sh \\"
    seed_argv = shlex.split(" ".join(lines[1:]).replace("\\", " "))
    assert _blocks()[name] == seed_argv
