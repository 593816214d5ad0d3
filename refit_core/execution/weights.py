"""Deterministic weights: every element's value is a function of (parameter, global index).

Sources fill their shards with it; destinations check theirs against it bitwise, with no
reference copy and no communication. An element (r, c) of a 2-D parameter holds
`(A[r] xor B[c]) - 128`, where A and B are multiplicative hashes of the parameter's id and the
global row / column index: integers in [-128, 127], exact in bf16, fp16 and fp32. A misplaced
row or column, or a slice of another parameter, shows up as wrong values (hashes have no period
for a shift to hide in), and building a shard costs one byte-wide pass instead of a hash per
element. Poisoning uses NaN, which never compares equal, so an element nothing wrote cannot pass.
"""

from __future__ import annotations

import torch

from refit_core.errors import VerificationError
from refit_core.planning.model import Inventory, ParamSpec
from refit_core.planning.storage import Slot, Storage

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_M1, _M2, _M3 = 0x9E3779B1, 0x85EBCA6B, 0x2C1B3C6D
_ROWS_PER_STEP = 1 << 22  # elements hashed at once: bounds the int64 temporaries


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def _hash8(idx: torch.Tensor, salt: int) -> torch.Tensor:
    """A byte per index: multiplicative hash of (salt, index), as uint8."""
    x = idx * _M1 + salt * _M2
    x = x ^ (x >> 15)
    x = x * _M3
    x = x ^ (x >> 13)
    return ((x >> 7) & 0xFF).to(torch.uint8)


def _global_axes(p: ParamSpec, slot: Slot, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global row indices and (2-D) global column indices of the slot's local tensor."""
    along = torch.cat([torch.arange(pc.start, pc.stop, device=device, dtype=torch.int64) for pc in slot.pieces])
    if len(p.shape) == 1:
        return along, None
    if p.split_dim == 0:
        return along, torch.arange(p.shape[1], device=device, dtype=torch.int64)
    return torch.arange(p.shape[0], device=device, dtype=torch.int64), along


def _expected_int8(param: int, rows_g: torch.Tensor, cols_g: torch.Tensor | None) -> torch.Tensor:
    """The expected values as int8 (`(A[r] xor B[c]) - 128`): one byte-wide pass. For a byte x,
    x - 128 in int8 is x xor 0x80 read as int8, so the 0x80 is folded into the row hashes."""
    a = _hash8(rows_g, 2 * param + 1) ^ 0x80
    v = a if cols_g is None else a[:, None] ^ _hash8(cols_g, 2 * param + 2)[None, :]
    return v.view(torch.int8)


def _expected(p: ParamSpec, param: int, rows_g: torch.Tensor, cols_g: torch.Tensor | None,
              dtype: torch.dtype) -> torch.Tensor:
    return _expected_int8(param, rows_g, cols_g).to(dtype)


def global_values(p: ParamSpec, param: int, device: torch.device) -> torch.Tensor:
    """The whole global tensor of parameter `param` (index in the inventory) in its dtype: what
    every shard of it is a slice of (the FP8 reference quantises it whole, reference.py)."""
    rows = torch.arange(p.shape[0], device=device, dtype=torch.int64)
    cols = torch.arange(p.shape[1], device=device, dtype=torch.int64) if len(p.shape) == 2 else None
    return _expected(p, param, rows, cols, _DTYPES[p.dtype])


def param_view(buf: torch.Tensor, slot: Slot, dtype: str) -> torch.Tensor:
    """The slot's shard as a typed tensor viewing the rank's byte buffer."""
    return buf[slot.offset: slot.offset + slot.nbytes].view(_DTYPES[dtype]).view(slot.shape)


def _row_steps(p: ParamSpec, slot: Slot) -> list[slice]:
    n = slot.shape[0]
    per_row = slot.nbytes // slot.itemsize // n
    step = max(1, _ROWS_PER_STEP // max(per_row, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def fill(buf: torch.Tensor, storage: Storage, inv: Inventory) -> None:
    """Write every shard's expected values into the rank's buffer."""
    for slot in storage.slots:
        p = inv.params[slot.param]
        view = param_view(buf, slot, p.dtype)
        rows_g, cols_g = _global_axes(p, slot, buf.device)
        for rows in _row_steps(p, slot):
            view[rows].copy_(_expected_int8(slot.param, rows_g[rows], cols_g))  # int8 -> dtype in the copy


def poison(buf: torch.Tensor) -> None:
    """Fill with 0xFF bytes: NaN in bf16, fp16 and fp32."""
    buf.fill_(0xFF)


def verify(buf: torch.Tensor, storage: Storage, inv: Inventory, rank: int) -> None:
    """Raise VerificationError naming the first wrong element (parameter, rank, global index)."""
    for slot in storage.slots:
        p = inv.params[slot.param]
        view = param_view(buf, slot, p.dtype)
        rows_g, cols_g = _global_axes(p, slot, buf.device)
        for rows in _row_steps(p, slot):
            got = view[rows]
            want = _expected(p, slot.param, rows_g[rows], cols_g, got.dtype)
            # bitwise: NaN poison never equals; integers never give -0
            ibits = torch.int16 if got.element_size() == 2 else torch.int32
            if not torch.equal(got.view(ibits), want.view(ibits)):
                bad = got.view(ibits) != want.view(ibits)
                flat = int(torch.nonzero(bad.reshape(-1))[0])
                ncols = 1 if cols_g is None else cols_g.numel()
                r, c = divmod(flat, ncols)
                idx = (int(rows_g[rows][r]),) if cols_g is None else (int(rows_g[rows][r]), int(cols_g[c]))
                raise VerificationError(
                    f"rank {rank}: {p.name} wrong at global index {idx}: got {float(got.reshape(-1)[flat])}, "
                    f"want {float(want.reshape(-1)[flat])}"
                )
