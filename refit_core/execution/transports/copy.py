"""Copy many byte blocks between buffers: one strided copy per block on CPU, one kernel on GPU.

A copy per slice launched one by one was measured at half the bandwidth of one large copy on an
H100 (docs/benchmarks.md), so on CUDA all blocks of a step go to one launch of a small
kernel (CuPy RawKernel, compiled once per process) that reads a table of block descriptors with
absolute addresses: a step may write to several buffers, peers' included.
"""

from __future__ import annotations

import importlib

from typing import Sequence

import torch

from refit_core.planning.blocks import Block, split_for_ctas


def copy_blocks_torch(blocks: Sequence[Block], src: torch.Tensor, dst: torch.Tensor) -> None:
    """Strided byte copies between two uint8 buffers, one torch op per block."""
    for b in blocks:
        if b.src_stride == b.row_bytes and b.dst_stride == b.row_bytes:
            n = b.nbytes
            dst[b.dst: b.dst + n].copy_(src[b.src: b.src + n])
        else:
            dst.as_strided((b.rows, b.row_bytes), (b.dst_stride, 1), b.dst).copy_(
                src.as_strided((b.rows, b.row_bytes), (b.src_stride, 1), b.src))


_KERNEL_SRC = r"""
typedef long long i64;
template <typename T>
__device__ __forceinline__ void copy_rows(const char* src, i64 ss, char* dst, i64 ds, i64 rows, i64 rb) {
    const i64 per_row = rb / (i64)sizeof(T);
    if (rows == 1) {
        const T* s = (const T*)src; T* d = (T*)dst;
        const i64 bd = blockDim.x;
        i64 i = threadIdx.x;
        for (; i + 3 * bd < per_row; i += 4 * bd) {
            T a = s[i], b = s[i + bd], c = s[i + 2 * bd], e = s[i + 3 * bd];
            d[i] = a; d[i + bd] = b; d[i + 2 * bd] = c; d[i + 3 * bd] = e;
        }
        for (; i < per_row; i += bd) d[i] = s[i];
        return;
    }
    const unsigned total = (unsigned)(rows * per_row);
    const unsigned pr = (unsigned)per_row;
    for (unsigned i = threadIdx.x; i < total; i += blockDim.x) {
        unsigned r = i / pr, c = i - r * pr;
        ((T*)(dst + r * ds))[c] = ((const T*)(src + r * ss))[c];
    }
}

extern "C" __global__ void copy_blocks(const i64* __restrict__ desc) {
    const i64* w = desc + 6 * (i64)blockIdx.x;
    const char* src = (const char*)w[0];
    const i64 ss = w[1];
    char* dst = (char*)w[2];
    const i64 ds = w[3], rows = w[4], rb = w[5];
    const i64 align = w[0] | ss | w[2] | ds | rb;
    if ((align & 15) == 0) copy_rows<int4>(src, ss, dst, ds, rows, rb);
    else if ((align & 7) == 0) copy_rows<long long>(src, ss, dst, ds, rows, rb);
    else if ((align & 3) == 0) copy_rows<int>(src, ss, dst, ds, rows, rb);
    else if ((align & 1) == 0) copy_rows<short>(src, ss, dst, ds, rows, rb);
    else copy_rows<char>(src, ss, dst, ds, rows, rb);
}
"""

_kernel = None


def _cuda_kernel():
    global _kernel
    if _kernel is None:
        import cupy

        _kernel = cupy.RawKernel(_KERNEL_SRC, "copy_blocks", options=("--std=c++17",))
    return _kernel


class CudaBlockCopy:
    """A prepared multi-block copy: descriptors built once, then one kernel launch per call.

    Each entry of `blocks` carries absolute device addresses (base pointers already added).
    """

    THREADS = 256

    def __init__(self, blocks: Sequence[Block], device: torch.device) -> None:
        parts = split_for_ctas(blocks)
        self.count = len(parts)
        self.nbytes = sum(b.nbytes for b in parts)
        self.desc = torch.tensor([list(b) for b in parts], dtype=torch.int64, device=device).reshape(-1) \
            if parts else None
        self._desc_cupy = None

    def __call__(self, stream: torch.cuda.Stream | None = None) -> None:
        if not self.count:
            return
        import cupy

        if self._desc_cupy is None:
            self._desc_cupy = cupy.asarray(self.desc)
        s = stream or torch.cuda.current_stream()
        with cupy.cuda.ExternalStream(s.cuda_stream, s.device.index):
            _cuda_kernel()((self.count,), (self.THREADS,), (self._desc_cupy,))


def absolute(blocks: Sequence[Block], src_base: int, dst_base: int) -> list[Block]:
    return [Block(b.src + src_base, b.src_stride, b.dst + dst_base, b.dst_stride, b.rows, b.row_bytes) for b in blocks]


def cuda_with(module: str) -> bool:
    """A CUDA GPU here, and the GPU-only `module` importable (cupy, triton): the one probe for GPU kernels."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def cuda_copy_available() -> bool:
    return cuda_with("cupy")
