"""FP8 block quantisation as the DeepSeek-V3 and Kimi K2 checkpoints store it: the one definition.

A 2-D weight is cut into 128 x 128 blocks from its first row and column; the last block of a
dimension that is not a multiple of 128 keeps its real extent (no padding enters the maximum).
For each block:

    amax      = max |w| over the block (exact: a maximum of BF16 values)
    scale_inv = amax / 448 in float32 (448: float8 e4m3fn's largest finite value); 1.0 where amax == 0
    fp8       = float8_e4m3fn(clamp(float32(w) / scale_inv, -448, 448)), rounded to nearest even

`scale_inv` is what the checkpoints call `weight_scale_inv`: the dequantisation multiplier,
w ~ float32(fp8) * scale_inv. An all-zero block stores 1.0 (any finite value dequantises its zeros
exactly; 1.0 keeps the multiplier invertible), and the clamp makes saturation explicit rather than
left to a cast's overflow rule. Every step is an IEEE operation (a maximum, a float32 division, a
rounding cast), so any device computing it from the same BF16 values gets the same bits: the
sender's quantisation and the verifier's reference agree bitwise.

Functions take rows [row0, row0 + R) of a tensor whose columns are all present, so a sender can
quantise the rows it holds with blocks aligned to the GLOBAL tensor (planning/precision.py).
"""

from __future__ import annotations

import torch

BLOCK = 128
E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn
_STEP_BLOCKS = 32  # block rows processed at once: bounds the float32 temporaries to 32 x 128 rows


def _blocks(row0: int, rows: int) -> tuple[int, int]:
    """Global block rows [b0, b1) that rows [row0, row0 + rows) touch."""
    return row0 // BLOCK, -(-(row0 + rows) // BLOCK)


def _padded(x: torch.Tensor, row0: int, dtype: torch.dtype) -> torch.Tensor:
    """`x` (rows [row0, row0+R)) placed in zeros covering its whole blocks: [nb, 128, cb, 128]."""
    b0, b1 = _blocks(row0, x.shape[0])
    cb = -(-x.shape[1] // BLOCK)
    out = torch.zeros((b1 - b0) * BLOCK, cb * BLOCK, dtype=dtype, device=x.device)
    front = row0 - b0 * BLOCK
    out[front: front + x.shape[0], : x.shape[1]] = x
    return out.view(b1 - b0, BLOCK, cb, BLOCK)


def _steps(row0: int, rows: int) -> list[tuple[int, int]]:
    """(first local row, row count) pieces of rows [row0, row0+rows), cut at global block boundaries."""
    out = []
    r = 0
    while r < rows:
        g = row0 + r
        stop = min(rows, (g // BLOCK + _STEP_BLOCKS) * BLOCK - row0)
        out.append((r, stop - r))
        r = stop
    return out


def block_amax(x: torch.Tensor, row0: int = 0) -> torch.Tensor:
    """float32 [nb, cb]: max |x| per 128 x 128 block over the rows given (rows [row0, row0+R) of
    the global tensor, all columns); a block the rows only partly cover gets their partial maximum."""
    b0, b1 = _blocks(row0, x.shape[0])
    out = torch.zeros(b1 - b0, -(-x.shape[1] // BLOCK), dtype=torch.float32, device=x.device)
    for r, n in _steps(row0, x.shape[0]):
        a0, a1 = _blocks(row0 + r, n)
        part = _padded(x[r: r + n], row0 + r, x.dtype).abs().amax(dim=(1, 3)).float()
        out[a0 - b0: a1 - b0] = torch.maximum(out[a0 - b0: a1 - b0], part)
    return out


def scales_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """`weight_scale_inv` from block maxima: amax / 448 in float32, 1.0 for an all-zero block."""
    amax = amax.float()
    return torch.where(amax == 0, torch.ones_like(amax), amax / E4M3_MAX)


def quantise_rows(x: torch.Tensor, scale_inv: torch.Tensor, row0: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """FP8 of rows [row0, row0+R) of the global tensor, with `scale_inv` [nb, cb] for the blocks
    they touch (as `block_amax` lays them out); written into `out` (any strides) when given."""
    if out is None:
        out = torch.empty(x.shape, dtype=FP8, device=x.device)
    b0, _ = _blocks(row0, x.shape[0])
    for r, n in _steps(row0, x.shape[0]):
        a0, a1 = _blocks(row0 + r, n)
        p = _padded(x[r: r + n], row0 + r, torch.float32)
        p /= scale_inv[a0 - b0: a1 - b0, None, :, None]
        p.clamp_(-E4M3_MAX, E4M3_MAX)
        front = row0 + r - a0 * BLOCK
        out[r: r + n] = p.view(-1, p.shape[2] * BLOCK)[front: front + n, : x.shape[1]].to(FP8)
    return out


def quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: (fp8 values, float32 scale_inv [ceil(R/128), ceil(C/128)]) of a whole 2-D tensor."""
    if w.dim() != 2:
        raise ValueError(f"FP8 block quantisation takes a 2-D weight, got shape {tuple(w.shape)}")
    s = scales_from_amax(block_amax(w))
    return quantise_rows(w, s), s


def dequantise(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """float32 weights back: fp8 x scale_inv per block (what an inference engine computes)."""
    s = scale_inv.repeat_interleave(BLOCK, 0)[: q.shape[0]].repeat_interleave(BLOCK, 1)[:, : q.shape[1]]
    return q.float() * s
