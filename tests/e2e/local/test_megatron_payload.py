"""`refitctl submit CONFIG --payload megatron`: refitctl's refit of real Megatron-Core models.

What a user relies on: the run builds both GPTModels on the ranks, refits their own parameters
(the engine fills, poisons and verifies the models' bytes, bit for bit), says so in results.json
(`transport.payload`), and times the first call apart from the steady state like every run;
`--payload synthetic` stays the default; a method that cannot serve real models is refused in one
line before launch. Small models, CPU, gloo.
"""

from __future__ import annotations

import functools

import json
from pathlib import Path

import pytest

import helpers
from helpers import SMALL
from orchestrator.cli import main

mb = pytest.importorskip("refit_core.peers.megatron_build")
needs_megatron = pytest.mark.skipif(mb.megatron_core() is None, reason="megatron-core not installed ('refitctl[megatron]')")


refitctl = functools.partial(helpers.refitctl, env={"COLUMNS": "200"})  # tables wide enough to read


@needs_megatron
def test_submit_collocated_4_payload_megatron_verifies_the_models(tmp_path: Path) -> None:
    p = refitctl("submit", "collocated-4", "--payload", "megatron", "--refit-method", "gloo", "--cluster", "local",
                 "--gpus", "4", "--num-benchmark-iterations", "2", "--poll", "0.5", *SMALL, runs=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "COMPLETED · verified · first " in p.stdout
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["run"]["payload"] == "megatron"
    res = json.loads((run / "results.json").read_text())
    assert res["verified"] and res["complete"] and res["timed_iterations"] == 2
    t = res["transport"]
    assert (t["payload"], t["models"]) == ("megatron", "megatron-core GPTModel")
    assert t["in_place"] == [False, False]  # a bare GPTModel's parameters: adopted once into one buffer per role
    assert t["cast_to_bf16"] > 0  # its fp32 norms and position embedding, as Float16Module casts them
    plan = json.loads((run / "plan.json").read_text())
    assert res["delivered_bytes"] == plan["network_bytes"] + plan["local_bytes"] > 0
    # Megatron-Core's own refit of the same models, and `compare` sets the two side by side
    p = refitctl("submit", "collocated-4", "--refit-method", "megatron-gloo", "--cluster", "local", "--gpus", "4",
                 "--num-benchmark-iterations", "2", "--poll", "0.5", *SMALL, runs=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    (peer,) = set(tmp_path.iterdir()) - {run}
    p = refitctl("compare", str(run), str(peer), runs=tmp_path)
    assert p.returncode == 0, p.stderr
    (row,) = [ln for ln in p.stdout.splitlines() if " payload " in ln]
    assert "Megatron-Core GPTModels (refitctl's library)" in row and "Megatron-Core GPTModels (Megatron-Core's" in row
    assert row.rstrip(" │|").endswith("same")  # the same parameters refit: a fair comparison


def test_payload_is_synthetic_by_default_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.configs import resolve

    assert resolve("config-4").run.payload == "synthetic"
    assert main(["plan", "config-4", "--payload", "real"]) == 2
    assert capsys.readouterr().err == "refitctl: error: --payload must be one of synthetic, megatron, got 'real'\n"
    assert main(["plan", "config-4", "--payload", "megatron", "--refit-method", "megatron-gloo"]) == 2
    assert capsys.readouterr().err == (
        "refitctl: error: --payload megatron refits the models through refitctl's library, which --refit-method "
        "megatron-gloo does not serve: use gloo on CPU or nccl on GPUs (megatron-* methods build their own models)\n")
