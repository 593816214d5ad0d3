"""The Triton kernels of the fused FP8 quantiser; fp8_kernel.py describes them and launches them.

Kept apart because Triton resolves a kernel's helpers among its module's globals, and this
module imports triton at the top: only fp8_kernel imports it, when a kernel first runs.
"""

import triton
import triton.language as tl


@triton.jit
def _e4m3(y):
    """float32 in [-448, 448] -> e4m3fn byte, round to nearest even on the bits (fp8_kernel.e4m3_bits)."""
    u = y.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960
    e = a >> 23
    mant = (a & 0x7FFFFF) | 0x800000
    s = tl.minimum(tl.maximum(141 - e, 1), 31)
    q = mant >> s
    rem = mant - (q << s)
    half = (s * 0 + 1) << (s - 1)
    sub = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    r = tl.where(a < 0x3C800000, sub, normal)
    return (r | sign).to(tl.uint8)


@triton.jit
def amax_kernel(x_ptr, desc_ptr, out_ptr, BLOCK_C: tl.constexpr, STEP: tl.constexpr):
    """One program per AmaxRect (5 int64 each): max |x| of a <= 128 x 128 block piece."""
    d = desc_ptr + tl.program_id(0).to(tl.int64) * 5
    x_off, stride = tl.load(d), tl.load(d + 1)
    rows, cols, out = tl.load(d + 2), tl.load(d + 3), tl.load(d + 4)
    c = tl.arange(0, BLOCK_C)
    acc = tl.zeros([STEP, BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(BLOCK_C // STEP):
        r = k * STEP + tl.arange(0, STEP)
        m = (r[:, None] < rows) & (c[None, :] < cols)
        v = tl.load(x_ptr + x_off + r[:, None].to(tl.int64) * stride + c[None, :], mask=m, other=0.0)
        acc = tl.maximum(acc, tl.abs(v.to(tl.float32)))
    tl.store(out_ptr + out, tl.max(tl.max(acc, axis=1), axis=0))


@triton.jit
def quantise_kernel(x_ptr, o_ptr, s_ptr, idx_ptr, desc_ptr, TR: tl.constexpr, TC: tl.constexpr,
                    STEPS: tl.constexpr, LIMIT: tl.constexpr):
    """One program per QuantRect tile (10 int64 each): e4m3(clamp(x / scale)) into the output bytes."""
    d = desc_ptr + tl.program_id(0).to(tl.int64) * 10
    x_off, x_stride, o_off, o_stride = tl.load(d), tl.load(d + 1), tl.load(d + 2), tl.load(d + 3)
    s_off, s_stride, srow, scol = tl.load(d + 4), tl.load(d + 5), tl.load(d + 6), tl.load(d + 7)
    rows, cols = tl.load(d + 8), tl.load(d + 9)
    c = tl.arange(0, TC)
    cm = c < cols
    sc = tl.load(idx_ptr + scol + c, mask=cm, other=0).to(tl.int64)
    for k in tl.static_range(STEPS):
        r = k * TR + tl.arange(0, TR)
        rm = r < rows
        sr = tl.load(idx_ptr + srow + r, mask=rm, other=0).to(tl.int64)
        m = rm[:, None] & cm[None, :]
        r64 = r[:, None].to(tl.int64)
        x = tl.load(x_ptr + x_off + r64 * x_stride + c[None, :], mask=m, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + s_off + sr[:, None] * s_stride + sc[None, :], mask=m, other=1.0)
        y = tl.math.div_rn(x, s)
        y = tl.minimum(tl.maximum(y, -LIMIT), LIMIT)
        tl.store(o_ptr + o_off + r64 * o_stride + c[None, :], _e4m3(y), mask=m)
