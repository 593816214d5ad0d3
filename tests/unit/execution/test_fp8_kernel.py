"""The fused FP8 quantiser (issue 22): its rounding on the bits equals torch's cast, and its Triton
kernels (run on CPU tensors by Triton's interpreter) write the bytes and scales of the torch
reference path, bitwise, on a real plan's shards: partial edge blocks, SwiGLU halves, row-parallel
(transposed) weights, pieces starting inside a block, scales as their own tensors.

The Triton tests need `triton` (the `test` extra installs it, so CI runs them); without it they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from refit_core.execution.fp8_kernel import QuantRect, e4m3_bits, quant_tiles
from refit_core.execution.quantize import FP8

HERE = Path(__file__).resolve().parent


def test_e4m3_rounding_on_the_bits_equals_torchs_cast() -> None:
    """Every finite BF16 value over a few scales, and every tie and its float32 neighbours: the
    kernel's integer round to nearest even gives torch's bytes (normal, subnormal, +-0, +-448)."""
    b = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    b = b[torch.isfinite(b)]
    ys = [(b / s).clamp(-448, 448) for s in (1.0, 3.0 / 448, 1000.0 / 448, 7.0)]
    grid = torch.arange(0, 256, dtype=torch.uint8).view(FP8).float()
    grid = grid[torch.isfinite(grid)].unique()
    mids = ((grid[1:] + grid[:-1]) / 2).contiguous().view(torch.int32)
    near = torch.cat([mids + d for d in (-2, -1, 0, 1, 2)]).view(torch.float32).clamp(-448, 448)
    y = torch.cat([*ys, near, -near, torch.tensor([0.0, -0.0, 448.0, -448.0, 2.0 ** -10, -(2.0 ** -12)])])
    assert torch.equal(e4m3_bits(y), y.to(FP8).view(torch.uint8))
    assert e4m3_bits(torch.tensor([31.4, 17.0, 19.0, 2.0 ** -9 * 1.5])).tolist() == [0x60, 0x58, 0x5A, 0x02]


def test_tiles_cover_each_rectangle_once() -> None:
    r = QuantRect(1000, 700, 50, 650, 8, 6, 3, 40, 300, 600)
    tiles = quant_tiles([r])
    seen = set()
    for t in tiles:
        i0, j0 = divmod(t.x_off - r.x_off, r.x_stride)
        assert (t.o_off - r.o_off) == i0 * r.o_stride + j0 and (t.srow, t.scol) == (r.srow + i0, r.scol + j0)
        seen |= {(i0 + i, j0 + j) for i in range(t.rows) for j in range(t.cols)}
    assert len(seen) == 300 * 600 == sum(t.rows * t.cols for t in tiles)


def _interpreted(check: str) -> None:
    """Run `check` of fp8_interpreted.py in a fresh process under Triton's interpreter: the variable
    must be set before triton is first imported (torch imports it), so not in this process."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    code = f"import fp8_interpreted as c; c.{check}()"
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_triton_kernels_match_the_reference_on_cut_and_transposed_pieces() -> None:
    """Rows 150.. of a 300 x 260 weight (a piece starting inside block row 1, ragged last block
    column, an all-zero block), read plain and transposed: partial maxima as block_amax's, bytes as
    quantise_rows'."""
    _interpreted("cut_and_transposed_pieces")


def test_triton_whole_tensor_quantiser_matches_the_reference() -> None:
    """The quantiser gpu_bench.py times (TensorQuantiser): ragged shapes, zero blocks, outliers."""
    _interpreted("whole_tensors")


def test_triton_path_writes_the_torch_paths_send_image_bitwise() -> None:
    """A real plan's source shards (collocated-4: source TP 2 x EP 2; SwiGLU fc1 halves, row-parallel
    fc2 and attention projections, experts): scales and every wire byte of the Triton path equal the
    torch path's (which tests/e2e/local/test_fp8_execution.py verifies against the reference)."""
    _interpreted("send_image_collocated_4")
