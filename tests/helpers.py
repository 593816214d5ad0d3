"""Helpers several test files share (tests/conftest.py keeps ROOT, SMALL_FLAGS and the skips): running
`refitctl` as a user types it, finding the run it made, the fault-injection log line, and random valid
layout pairs for property tests. Importable as `from helpers import ...` from every test folder
(tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import strategies as st

from conftest import ROOT, SMALL_FLAGS
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

SMALL = [a for k, v in SMALL_FLAGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
FAULT_AT = re.compile(r"test fault \w+ injected \(wall clock ([0-9.]+)\)")  # refit_core/execution/faults.py


def refitctl(*args: str, runs: Path, env: dict[str, str] | None = None, timeout: float = 300,
             check: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main())", *args]
    full_env = {**os.environ, "REFITCTL_RUNS_DIR": str(runs), "COLUMNS": "160", **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def only_run(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if (d / "run.json").exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def run_json(d: Path) -> dict:
    return json.loads((d / "run.json").read_text())


def only_run_or_sweep(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if (d / "sweep.json").exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@st.composite
def layout_pairs(draw):
    """Random valid (model, source, destination, mode) with TP, EP, PP up to 8."""
    deg = st.sampled_from([1, 2, 4, 8])
    src = ParallelLayout(tp=draw(deg), ep=draw(deg), pp=draw(st.sampled_from([1, 2, 4])))
    dst = ParallelLayout(tp=draw(deg), ep=draw(deg), pp=draw(st.sampled_from([1, 2])))
    mode = draw(st.sampled_from(list(RefitMode)))
    swiglu = draw(st.booleans())
    moe = draw(st.booleans()) or src.ep > 1 or dst.ep > 1
    layers = 4
    model = ModelSpec(
        num_layers=layers, hidden_size=64, num_attention_heads=8, num_query_groups=draw(st.sampled_from([8, 8, 16])) // 2 * 1 or 8,
        ffn_hidden_size=96, num_experts=16 if moe else None, moe_ffn_hidden_size=48,
        moe_shared_expert_intermediate_size=draw(st.sampled_from([None, 32])) if moe else None,
        swiglu=swiglu, disable_bias_linear=moe or draw(st.booleans()), vocab_size=200,
        untie_embeddings_and_output_weights=draw(st.booleans()),
        first_dense_layers=draw(st.sampled_from([0, 1])) if moe else 0,
    )
    return model, src, dst, mode


def ddp_like(shards: dict, gap: int = 64, device: str = "cpu") -> dict:
    """`shards` copied into views of ONE bf16 buffer in REVERSED order with `gap` elements between them, as
    Megatron-Core's DDP lays out a model's parameters (not refitctl's order): a caller's in-place buffer."""
    import torch

    flat = torch.empty(sum(v.numel() + gap for v in shards.values()), dtype=torch.bfloat16, device=device)
    out, at = {}, 0
    for name in reversed(list(shards)):
        v = shards[name]
        out[name] = flat[at: at + v.numel()].view(v.shape)
        out[name].copy_(v)
        at += v.numel() + gap
    return out
