"""Deterministic weights: every element's value is a function of (parameter, global index).

Sources fill their shards with it; destinations check theirs against it bitwise, with no
reference copy and no communication. Values are integers in [-128, 127], exact in bf16, fp16
and fp32, from a multiplicative hash of the global index, so a misplaced slice shows up as a
wrong value (no short period for a shift to hide in). Poisoning uses NaN, which never compares
equal, so an element nothing wrote cannot pass.
"""

from __future__ import annotations

import torch

from refit_core.errors import VerificationError
from refit_core.model import Inventory, ParamSpec
from refit_core.storage import Slot, Storage

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_M1, _M2, _M3 = 0x9E3779B1, 0x85EBCA6B, 0x2C1B3C6D
_ROWS_PER_STEP = 1 << 22  # elements hashed at once: bounds the int64 temporaries


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def _hash_values(gidx: torch.Tensor, param: int) -> torch.Tensor:
    x = gidx * _M1 + (param + 1) * _M2
    x = x ^ (x >> 15)
    x = x * _M3
    x = x ^ (x >> 13)
    return ((x >> 7) & 0xFF) - 128


def _global_index(p: ParamSpec, slot: Slot, device: torch.device, rows: slice | None = None) -> torch.Tensor:
    """Global linear indices of the slot's local elements (row range `rows` of the local tensor)."""
    d = p.split_dim
    along = torch.cat([torch.arange(pc.start, pc.stop, device=device, dtype=torch.int64) for pc in slot.pieces])
    if len(p.shape) == 1:
        return along if rows is None else along[rows]
    cols_global = p.shape[1]
    if d == 0:
        r = along if rows is None else along[rows]
        return r[:, None] * cols_global + torch.arange(cols_global, device=device, dtype=torch.int64)[None, :]
    r = torch.arange(p.shape[0], device=device, dtype=torch.int64)
    r = r if rows is None else r[rows]
    return r[:, None] * cols_global + along[None, :]


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
        for rows in _row_steps(p, slot):
            view[rows] = _hash_values(_global_index(p, slot, buf.device, rows), slot.param).to(view.dtype)


def poison(buf: torch.Tensor) -> None:
    """Fill with 0xFF bytes: NaN in bf16, fp16 and fp32."""
    buf.fill_(0xFF)


def verify(buf: torch.Tensor, storage: Storage, inv: Inventory, rank: int) -> None:
    """Raise VerificationError naming the first wrong element (parameter, rank, global index)."""
    for slot in storage.slots:
        p = inv.params[slot.param]
        view = param_view(buf, slot, p.dtype)
        for rows in _row_steps(p, slot):
            got = view[rows]
            gidx = _global_index(p, slot, buf.device, rows)
            want = _hash_values(gidx, slot.param).to(got.dtype)
            # bitwise comparison: NaN poison never equals, -0/+0 cannot arise from integers
            bad = got.view(torch.int16 if got.element_size() == 2 else torch.int32) != \
                want.view(torch.int16 if want.element_size() == 2 else torch.int32)
            if bool(bad.any()):
                flat = int(torch.nonzero(bad.reshape(-1))[0])
                g = int(gidx.reshape(-1)[flat])
                idx = tuple(int(i) for i in _unravel(g, p.shape))
                raise VerificationError(
                    f"rank {rank}: {p.name} wrong at global index {idx}: got {float(got.reshape(-1)[flat])}, "
                    f"want {float(want.reshape(-1)[flat])}"
                )


def _unravel(g: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for s in reversed(shape):
        out.append(g % s)
        g //= s
    return list(reversed(out))
