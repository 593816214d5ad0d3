"""The fused FP8 quantiser (issue 22): Triton kernels that read BF16 once per pass and write e4m3
bytes, bitwise equal to quantize.py's reference, plus the same work in torch for the CPU.

Two passes, both over descriptor tables built once at set-up, so a whole step is one launch:

- `amax`: one program per 128 x 128 block piece (`AmaxRect`, partial edges and rows cut by a
  shard boundary included): max |w| as float32 into the slot the block's scale will take.
- `quantise`: one program per tile of a rectangle (`QuantRect`) of a weight shard: reads BF16, looks
  up each element's `weight_scale_inv` through two small index tables (scale row of each local row,
  scale column of each local column: the tables absorb TP cuts, SwiGLU halves and row-parallel
  weights), divides (IEEE, round to nearest), clamps to +-448 and writes the e4m3 byte. The
  rectangle's destination is any strided byte buffer: a staging bucket about to be sent, a local
  destination shard, or a send image.

Why the rounding is integer arithmetic (`e4m3_bits`, `_e4m3` in the kernel): Triton's interpreter
(TRITON_INTERPRET=1, what CI runs on CPU) converts float32 to float8e4nv by truncating and adding
the first cut-off bit (round half up, no sticky bits, not to even) and joins the rounded-up
mantissa to the exponent with OR instead of an add, so 31.4 becomes 16.0 (0x58) instead of 32.0
(0x60) (triton 3.9.0, runtime/interpreter.py `_convert_float`). On the GPU the cast is
`cvt.rn.satfinite.e4m3x2.f32`. Doing the round to nearest even ourselves on the float32 bits (the
value is already clamped to +-448, so no overflow and no NaN) gives the same bytes in the
interpreter, on every GPU, and as torch's cast (tests/unit/execution/test_fp8_kernel.py checks all
three), at a few integer operations per element of a memory-bound kernel.

Importing this module needs neither triton nor a GPU; the kernels are compiled on first use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from refit_core.execution.fp8_layout import AmaxRect, QuantRect
from refit_core.execution.quantize import BLOCK, E4M3_MAX, FP8

TILE_ROWS = 16  # rows a quantise program handles per step (registers: TILE_ROWS x TILE_COLS elements)
TILE_COLS = 256  # columns of a quantise tile
TILE_STEPS = 8  # steps per program: one descriptor covers TILE_ROWS * TILE_STEPS rows x TILE_COLS columns
AMAX_STEP = 32  # rows of a 128-column block an amax program loads at once
TORCH_STEP_ELEMENTS = 1 << 20  # elements the torch path quantises at once (bounds its float32 temporaries)


def e4m3_bits(y: torch.Tensor) -> torch.Tensor:
    """float32 in [-448, 448] -> float8 e4m3fn bytes (uint8), rounded to nearest even on the bits:
    the kernel's algorithm in torch (what the tests compare with torch's own cast)."""
    u = y.float().contiguous().view(torch.int32)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960  # rebias 127 -> 7: (127 - 7) << 3
    e = a >> 23
    mant = (a & 0x7FFFFF) | 0x800000
    s = (141 - e).clamp(1, 31)  # subnormal: value / 2^-9 = mant >> (141 - e)
    q = mant >> s
    rem = mant - (q << s)
    half = torch.ones_like(s) << (s - 1)
    sub = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(torch.int32)
    r = torch.where(a < 0x3C800000, sub, normal)  # below 2^-6: subnormal (or zero)
    return (r | sign).to(torch.uint8)


# -- descriptor tables (pure) ------------------------------------------------------------------------
def quant_tiles(rects: Sequence[QuantRect]) -> list[QuantRect]:
    """Rectangles cut into program-sized tiles (at most TILE_ROWS * TILE_STEPS x TILE_COLS)."""
    out: list[QuantRect] = []
    tall = TILE_ROWS * TILE_STEPS
    for r in rects:
        for i in range(0, r.rows, tall):
            for j in range(0, r.cols, TILE_COLS):
                out.append(QuantRect(r.x_off + i * r.x_stride + j, r.x_stride, r.o_off + i * r.o_stride + j,
                                     r.o_stride, r.s_off, r.s_stride, r.srow + i, r.scol + j,
                                     min(tall, r.rows - i), min(TILE_COLS, r.cols - j)))
    return out


def triton_available() -> bool:
    """Whether the Triton kernels can run on this machine's GPU: a GPU, and triton importable (it
    ships with torch's CUDA wheels). Tests run them on CPU tensors under Triton's interpreter."""
    from refit_core.execution.transports.copy import cuda_with

    return cuda_with("triton")


@lru_cache(maxsize=None)
def _kernels():
    """The two Triton kernels (refit_core/execution/fp8_triton.py), compiled on first use: importing
    that module imports triton, which a CPU-only install need not have."""
    from refit_core.execution import fp8_triton

    return fp8_triton.amax_kernel, fp8_triton.quantise_kernel


def _table(rows: Sequence[tuple[int, ...]], device: torch.device) -> torch.Tensor | None:
    return torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1) if rows else None


class TritonAmax:
    """Block maxima of prepared block pieces: one launch per call."""

    def __init__(self, rects: Sequence[AmaxRect], device: torch.device) -> None:
        self.count = len(rects)
        self.desc = _table(rects, device)

    @property
    def desc_bytes(self) -> int:
        return 0 if self.desc is None else self.desc.numel() * 8

    def __call__(self, x: torch.Tensor, amax: torch.Tensor) -> int:
        """`x`: the BF16 buffer (typed view), `amax`: the float32 buffer. Returns launches."""
        if not self.count:
            return 0
        kernel, _ = _kernels()
        kernel[(self.count,)](x, self.desc, amax, BLOCK_C=BLOCK, STEP=AMAX_STEP)
        return 1


class TritonQuantise:
    """Prepared rectangles quantised into their destinations: one launch per call."""

    def __init__(self, rects: Sequence[QuantRect], device: torch.device) -> None:
        tiles = quant_tiles(rects)
        self.count = len(tiles)
        self.desc = _table(tiles, device)

    @property
    def desc_bytes(self) -> int:
        return 0 if self.desc is None else self.desc.numel() * 8

    def __call__(self, x: torch.Tensor, out: torch.Tensor, scales: torch.Tensor, index: torch.Tensor) -> int:
        """`x`: BF16 buffer, `out`: uint8 buffer, `scales`: float32 buffer, `index`: int32 table."""
        if not self.count:
            return 0
        _, kernel = _kernels()
        kernel[(self.count,)](x, out, scales, index, self.desc, TR=TILE_ROWS, TC=TILE_COLS, STEPS=TILE_STEPS,
                              LIMIT=E4M3_MAX)
        return 1


# -- the same work in torch (CPU, and GPUs without triton) ------------------------------------------
def quantise_rects_torch(rects: Sequence[QuantRect], x: torch.Tensor, out: torch.Tensor, scales: torch.Tensor,
                         index: torch.Tensor) -> int:
    """What `TritonQuantise` computes, with the reference's own operations (float32 division, clamp,
    torch's cast), a bounded number of rows at a time. Returns the rectangles done."""
    for r in rects:
        step = max(1, TORCH_STEP_ELEMENTS // max(r.cols, 1))
        cols = index[r.scol: r.scol + r.cols].long()
        for i in range(0, r.rows, step):
            n = min(step, r.rows - i)
            src = x.as_strided((n, r.cols), (r.x_stride, 1), r.x_off + i * r.x_stride).float()
            srow = index[r.srow + i: r.srow + i + n].long()
            s = scales[r.s_off + srow[:, None] * r.s_stride + cols[None, :]]
            src /= s
            src.clamp_(-E4M3_MAX, E4M3_MAX)
            out.as_strided((n, r.cols), (r.o_stride, 1), r.o_off + i * r.o_stride).copy_(src.to(FP8).view(torch.uint8))
    return len(rects)


# -- a whole tensor (the benchmark's ceiling and the GPU tests) ---------------------------------------
def whole_tensor_work(rows: int, cols: int) -> tuple[list[AmaxRect], QuantRect, list[int]]:
    """Descriptors quantising a contiguous [rows, cols] tensor whole: its block pieces (maxima into a
    [ceil(rows/128), ceil(cols/128)] scale tensor), one rectangle, and its scale-index table."""
    nb, cb = -(-rows // BLOCK), -(-cols // BLOCK)
    amax = [AmaxRect(b * BLOCK * cols + c * BLOCK, cols, min(BLOCK, rows - b * BLOCK), min(BLOCK, cols - c * BLOCK),
                     b * cb + c) for b in range(nb) for c in range(cb)]
    index = [i // BLOCK for i in range(rows)] + [j // BLOCK for j in range(cols)]
    return amax, QuantRect(0, cols, 0, cols, 0, cb, 0, rows, rows, cols), index


class TensorQuantiser:
    """The fused quantiser on one contiguous 2-D tensor shape, prepared once: `(w)` -> (fp8, scale_inv)
    as quantize.quantise defines them, through the two Triton kernels."""

    def __init__(self, rows: int, cols: int, device: torch.device) -> None:
        amax, rect, index = whole_tensor_work(rows, cols)
        self.shape, self.scale_shape = (rows, cols), (-(-rows // BLOCK), -(-cols // BLOCK))
        self.amax = TritonAmax(amax, device)
        self.quantise = TritonQuantise([rect], device)
        self.index = torch.tensor(index, dtype=torch.int32, device=device)

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """The scale pass: float32 scale_inv per block."""
        s = torch.empty(self.scale_shape, dtype=torch.float32, device=w.device)
        self.amax(w.reshape(-1), s.view(-1))
        return torch.where(s == 0, torch.ones_like(s), s / E4M3_MAX)

    def values(self, w: torch.Tensor, scale_inv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The quantise pass into `out` (float8 e4m3fn, w's shape)."""
        self.quantise(w.reshape(-1), out.view(torch.uint8).view(-1), scale_inv.reshape(-1), self.index)
        return out

    def __call__(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(w.shape) != self.shape or not w.is_contiguous():
            raise ValueError(f"prepared for a contiguous {self.shape} tensor, got {tuple(w.shape)}")
        s = self.scales(w)
        return self.values(w, s, torch.empty(self.shape, dtype=FP8, device=w.device)), s
