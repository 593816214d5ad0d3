"""A sender's wire shards computed where they are needed, from its BF16 shards: no FP8 send image.

The wire source (wire.py: FP8 weights, their `weight_scale_inv` rows, BF16 parameters as they are)
is never held whole. Each iteration the rank first computes its scales (`scales()`):

1. each quantised weight's per-block absolute maximum over the rows it holds (blocks aligned to the
   GLOBAL tensor, quantize.py), written where the block's scale will be;
2. the blocks a source TP boundary cuts (`Plan.gathers`): every active rank puts its partial maxima
   (zeros where it holds none) into one float32 vector, in plan order, and ONE all-reduce (max)
   over the active group completes them (skipped when the plan has no gathers);
3. scale_inv = amax / 448 (1.0 for an all-zero block), in place.

Then any list of wire-source byte blocks (blocks.py) can be produced into any buffer by a
`FillStep`, prepared once: a staging bucket about to be sent (two-sided transports pack with it),
a local destination shard (local copies: quantised inside the copy), or a whole send image (the
one-sided path, whose peers read it). FP8 weight bytes are quantised from BF16 on the way
(fp8_kernel.py: Triton on a GPU, the reference's torch operations otherwise); scale rows are copied
from the small scale buffer and BF16 parameters from the BF16 shards.

Memory beyond the BF16 shards: the scale buffer (4 bytes per 128 x 128 block held), two int32
index tables (one entry per local row and column of each quantised weight), the gather vector, and
the kernels' descriptor tables.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from refit_core.execution.fp8_kernel import TritonAmax, TritonQuantise, quantise_rects_torch, triton_available
from refit_core.execution.fp8_layout import Fp8Layout
from refit_core.execution.quantize import block_amax, scales_from_amax
from refit_core.planning.storage import Storage
from refit_core.execution.transports.base import allocate
from refit_core.planning.blocks import Block
from refit_core.execution.transports.copy import CudaBlockCopy, absolute, copy_blocks_torch, cuda_copy_available
from refit_core.execution.weights import torch_dtype
from refit_core.planning.plan import Plan


class Fp8Source:
    """This source rank's BF16 shards, its scales, and the means to produce any wire bytes from them."""

    def __init__(self, plan: Plan, rank: int, device: torch.device, group: object,
                 use_triton: bool | None = None) -> None:
        """`use_triton`: None picks the Triton kernels on a GPU where triton imports (the tests force
        them on CPU tensors under Triton's interpreter)."""
        self.plan, self.device, self.group = plan, device, group
        self.layout = lay = Fp8Layout.of(plan, rank)
        self.train, self.wire, self.weights, self.scale_at = lay.train, lay.wire, lay.weights, lay.scale_at
        self.vector_len = lay.vector_len
        self.train_buf = allocate(self.train.nbytes + self.train.nbytes % 2, device)
        self.scale_buf = allocate(lay.scale_bytes, device)
        self.index = torch.tensor(lay.index or (0,), dtype=torch.int32, device=device)
        self.cuda = device.type == "cuda"
        self.triton = (self.cuda and triton_available()) if use_triton is None else use_triton
        if len({w.train.itemsize for w in self.weights}) > 1:
            raise AssertionError("quantised weights of several dtypes in one shard")
        self.dtype = torch_dtype(plan.inventory.params[self.weights[0].param].dtype) if self.weights else torch.bfloat16
        src, dst = lay.gather_maps()
        backend = dist.get_backend(group) if self.vector_len and dist.is_initialized() else None
        self.vector_device = device if backend == "nccl" else torch.device("cpu")
        self.gather_src = torch.tensor(src, dtype=torch.int64, device=device)
        self.gather_dst = torch.tensor(dst, dtype=torch.int64, device=self.vector_device)
        self.amax_kernel = TritonAmax(lay.amax_rects(), device) if self.triton else None

    @property
    def extra_bytes(self) -> int:
        """Device bytes beyond the BF16 shards: scales, index tables, gather maps, amax descriptors."""
        n = self.scale_buf.numel() + self.index.numel() * 4 + (self.gather_src.numel() * 8) * 2
        return n + (self.amax_kernel.desc_bytes if self.amax_kernel else 0) + 4 * self.vector_len

    # -- each iteration ---------------------------------------------------------------------------
    def _view(self, buf: torch.Tensor, offset: int, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype,
              transposed: bool) -> torch.Tensor:
        v = buf[offset: offset + nbytes].view(dtype).view(shape)
        return v.t() if transposed else v

    def _amax_torch(self) -> None:
        for w in self.weights:
            x = self._view(self.train_buf, w.train.offset, w.train.nbytes, w.train.shape, self.dtype, w.transposed)
            n = w.scale_shape[0] * w.scale_shape[1] * 4
            s = self._view(self.scale_buf, w.scale_off * 4, n, w.scale_shape, torch.float32, w.transposed)
            for pc in w.pieces:
                a = block_amax(x[pc.local: pc.local + pc.rows], pc.row0)
                s[pc.scale_local: pc.scale_local + a.shape[0]] = a

    def scales(self) -> None:
        """Steps 1-3 of the module's docstring: every scale this rank sends, in the scale buffer."""
        floats = self.scale_buf.view(torch.float32) if self.scale_buf.numel() % 4 == 0 else None
        if self.amax_kernel is not None:
            self.amax_kernel(self.train_buf.view(self.dtype), floats)
        else:
            self._amax_torch()
        if self.vector_len:
            vector = torch.zeros(self.vector_len, dtype=torch.float32, device=self.vector_device)
            if self.gather_src.numel():
                vector.scatter_reduce_(0, self.gather_dst, floats[self.gather_src].to(self.vector_device), "amax")
            dist.all_reduce(vector, op=dist.ReduceOp.MAX, group=self.group)
            if self.gather_src.numel():
                floats[self.gather_src] = vector[self.gather_dst].to(self.device)
        if floats is not None:
            floats.copy_(scales_from_amax(floats))

    def poison(self) -> None:
        """0xFF (NaN) in every scale: an iteration that skipped `scales()` cannot pass on old ones."""
        self.scale_buf.fill_(0xFF)

    def step(self, blocks: list[Block], dst: torch.Tensor) -> "FillStep":
        """A prepared producer of wire-source `blocks` (src: wire offsets) into `dst` (dst offsets)."""
        return FillStep(self, blocks, dst)

    def image_blocks(self, storage: Storage) -> list[Block]:
        return self.layout.image_blocks(storage)


class FillStep:
    """Wire-source blocks produced into one buffer, split once by kind: BF16 parameters copied from
    the BF16 shards, scale rows copied from the scale buffer, FP8 weights quantised on the way."""

    def __init__(self, source: Fp8Source, blocks: list[Block], dst: torch.Tensor) -> None:
        self.source, self.dst = source, dst
        plain, scales, self.rects = source.layout.split(blocks)
        self.plain, self.scales = plain, scales
        cuda = source.cuda and cuda_copy_available()
        self.copies = [CudaBlockCopy(absolute(bs, buf.data_ptr(), dst.data_ptr()), dst.device)
                       for bs, buf in ((plain, source.train_buf), (scales, source.scale_buf)) if bs] if cuda else None
        self.kernel = TritonQuantise(self.rects, dst.device) if source.triton and self.rects else None

    @property
    def desc_bytes(self) -> int:
        n = sum(c.desc.numel() * 8 for c in self.copies or () if c.desc is not None)
        return n + (self.kernel.desc_bytes if self.kernel else 0)

    def __call__(self) -> int:
        """Produce the bytes; returns kernel launches (GPU) or copy operations (CPU)."""
        src = self.source
        n = 0
        if self.copies is not None:
            for c in self.copies:
                c()
                n += 1
        else:
            copy_blocks_torch(self.plain, src.train_buf, self.dst)
            copy_blocks_torch(self.scales, src.scale_buf, self.dst)
            n += len(self.plain) + len(self.scales)
        if self.rects:
            x, s = src.train_buf.view(src.dtype), src.scale_buf.view(torch.float32)
            if self.kernel is not None:
                n += self.kernel(x, self.dst, s, src.index)
            else:
                n += quantise_rects_torch(self.rects, x, self.dst, s, src.index)
        return n
