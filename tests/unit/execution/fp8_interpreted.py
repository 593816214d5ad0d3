"""Checks of the Triton FP8 kernels on CPU tensors, run by test_fp8_kernel.py in a process started
with TRITON_INTERPRET=1 (Triton's interpreter must be chosen before triton is first imported).
Each check raises AssertionError on the first difference; not a test module itself."""

from __future__ import annotations

import torch

from conftest import SMALL_FLAGS
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.execution import weights
from refit_core.execution.fp8_kernel import AmaxRect, QuantRect, TritonAmax, TritonQuantise
from refit_core.execution.fp8_source import Fp8Source
from refit_core.execution.quantize import block_amax, quantise, quantise_rows

CPU = torch.device("cpu")


def _amax_rects(transposed: bool) -> list[AmaxRect]:
    """Block pieces of rows 150..300 of a 300 x 260 weight (memory [260, 300] when transposed)."""
    rects = []
    for b in (1, 2):
        lo, hi = max(b * 128, 150) - 150, min((b + 1) * 128, 300) - 150
        for c in range(3):
            n = min(128, 260 - c * 128)
            if transposed:
                rects.append(AmaxRect(c * 128 * 300 + 150 + lo, 300, n, hi - lo, (b - 1) * 3 + c))
            else:
                rects.append(AmaxRect((150 + lo) * 260 + c * 128, 260, hi - lo, n, (b - 1) * 3 + c))
    return rects


def cut_and_transposed_pieces() -> None:
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(300, 260, generator=g) * 30).bfloat16()
    w[128:256, 128:256] = 0  # an all-zero block: scale 1.0
    scale = quantise(w)[1][1:].contiguous()  # the whole tensor's scales of block rows 1-2
    want = quantise_rows(w[150:], scale, row0=150).view(torch.uint8)
    split = [(150 + i) // 128 - 1 for i in range(150)]
    other = [j // 128 for j in range(260)]
    for transposed in (False, True):
        t = w.t().contiguous() if transposed else w
        out = torch.zeros(6)
        TritonAmax(_amax_rects(transposed), CPU)(t.reshape(-1), out)
        assert torch.equal(out.view(2, 3), block_amax(w[150:], row0=150)), transposed
        got = torch.full((150 * 260,), 0xAA, dtype=torch.uint8)
        if transposed:  # memory [260, 150] of the piece, its scales [3, 2] in memory
            rect = QuantRect(150, 300, 0, 150, 0, 2, 0, 260, 260, 150)
            index = torch.tensor(other + split, dtype=torch.int32)
            TritonQuantise([rect], CPU)(t.reshape(-1), got, scale.t().contiguous().reshape(-1), index)
            assert torch.equal(got.view(260, 150), want.t())
        else:
            rect = QuantRect(150 * 260, 260, 0, 260, 0, 3, 0, 150, 150, 260)
            index = torch.tensor(split + other, dtype=torch.int32)
            TritonQuantise([rect], CPU)(t.reshape(-1), got, scale.reshape(-1), index)
            assert torch.equal(got.view(150, 260), want)


def _send_image(name: str) -> None:
    cfg = apply_overrides(resolve(name), {**SMALL_FLAGS, "rl_inference_precision": "fp8", "refit_method": "gloo"})
    plan = cfg.plan()
    rank = plan.world.source.ranks[-1]
    images = []
    for triton in (False, True):
        src = Fp8Source(plan, rank, CPU, None, use_triton=triton)
        weights.fill(src.train_buf, src.train, plan.inventory)
        src.poison()  # the scale buffer's padding too: the same bytes in both
        src.scales()
        image = torch.full((src.wire.nbytes,), 0xAA, dtype=torch.uint8)
        src.step(src.image_blocks(src.wire), image)()
        images.append((src.scale_buf.clone(), image))
    assert src.weights and any(w.transposed for w in src.weights) and src.amax_kernel is not None
    assert torch.equal(images[0][0], images[1][0]), "scales differ"
    assert torch.equal(images[0][1], images[1][1]), "wire bytes differ"


def send_image_collocated_4() -> None:
    _send_image("collocated-4")


def whole_tensors() -> None:
    """TensorQuantiser (what gpu_bench times) on ragged shapes, with zero blocks and outliers."""
    from refit_core.execution.fp8_kernel import TensorQuantiser

    g = torch.Generator().manual_seed(5)
    for rows, cols in ((1, 1), (130, 260), (257, 129), (128, 384)):
        w = (torch.randn(rows, cols, generator=g) * 10).bfloat16()
        w[:, :1] = 0
        w[-1, -1] = 1e4
        q, s = TensorQuantiser(rows, cols, CPU)(w)
        want_q, want_s = quantise(w)
        assert torch.equal(s.view(torch.int32), want_s.view(torch.int32)), (rows, cols)
        assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), (rows, cols)
