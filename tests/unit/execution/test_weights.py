"""execution/weights.py on the CPU: the exact deterministic values a source writes, NaN poison, and a
verification that names the first wrong element (parameter, rank, global index)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SMALL_FLAGS
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.errors import VerificationError
from refit_core.execution import weights
from refit_core.planning.storage import rank_storage

_M1, _M2, _M3 = 0x9E3779B1, 0x85EBCA6B, 0x2C1B3C6D


def _int64(x: int) -> int:
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def hash8(index: int, salt: int) -> int:
    """The documented hash, in plain Python integers (int64 arithmetic, as torch does it)."""
    x = _int64(index * _M1 + salt * _M2)
    x ^= x >> 15
    x = _int64(x * _M3)
    x ^= x >> 13
    return (x >> 7) & 0xFF


def expected(param: int, row: int, col: int | None) -> int:
    """Element (row, col) of parameter `param`: (A[row] xor B[col]) - 128; 1-D: A[row] - 128."""
    a = hash8(row, 2 * param + 1)
    return (a if col is None else a ^ hash8(col, 2 * param + 2)) - 128


@pytest.fixture(scope="module")
def shard():
    """Local rank 1 of a TP=2 destination of the small model: its storage, inventory and a filled buffer."""
    cfg = apply_overrides(resolve("config-1"), SMALL_FLAGS)
    inv = cfg.inventory()
    storage = rank_storage(inv, cfg.layouts.destination, 1)
    buf = torch.empty(storage.nbytes, dtype=torch.uint8)
    weights.fill(buf, storage, inv)
    return inv, storage, buf


def _first_global_index(p, slot) -> tuple[int, ...]:
    start = slot.pieces[0].start
    if len(p.shape) == 1:
        return (start,)
    return (start, 0) if p.split_dim == 0 else (0, start)


def test_fill_writes_the_documented_values(shard) -> None:
    inv, storage, buf = shard
    checked = {"1-D": 0, "split rows": 0, "split columns": 0}
    for slot in storage.slots:
        p = inv.params[slot.param]
        view = weights.param_view(buf, slot, p.dtype)
        idx = _first_global_index(p, slot)
        first = view.reshape(-1)[0].item()
        assert first == expected(slot.param, idx[0], idx[1] if len(idx) == 2 else None), p.name
        if len(p.shape) == 1:
            checked["1-D"] += 1
        elif p.split_dim == 1 and slot.pieces[0].start > 0:  # a right-hand TP half: columns from the middle
            checked["split columns"] += 1
            r, c = 3, 5
            assert view[r, c].item() == expected(slot.param, r, slot.pieces[0].start + c), p.name
        elif p.split_dim == 0 and slot.pieces[0].start > 0:
            checked["split rows"] += 1
            r, c = 2, 7
            assert view[r, c].item() == expected(slot.param, slot.pieces[0].start + r, c), p.name
    assert all(checked.values()), checked
    values = torch.cat([weights.param_view(buf, s, inv.params[s.param].dtype).reshape(-1).float()
                        for s in storage.slots])
    assert values.min().item() >= -128 and values.max().item() <= 127 and torch.equal(values, values.round())


def test_a_filled_buffer_verifies_and_poison_is_nan_everywhere(shard) -> None:
    inv, storage, buf = shard
    weights.verify(buf, storage, inv, rank=5)
    poisoned = buf.clone()
    weights.poison(poisoned)
    for slot in storage.slots:
        assert torch.isnan(weights.param_view(poisoned, slot, inv.params[slot.param].dtype).float()).all()
    first = storage.slots[0]
    p = inv.params[first.param]
    with pytest.raises(VerificationError, match=rf"^rank 5: {p.name} wrong at global index "
                                                rf"\({', '.join(map(str, _first_global_index(p, first)))},?\): got nan"):
        weights.verify(poisoned, storage, inv, rank=5)


def test_a_flipped_bit_is_caught_and_named(shard) -> None:
    inv, storage, buf = shard
    slot = next(s for s in storage.slots if inv.params[s.param].split_dim == 1 and s.pieces[0].start > 0)
    p = inv.params[slot.param]
    row, col = 3, 5  # local; the global column is the piece's start + 5
    bad = buf.clone()
    element = slot.offset + (row * slot.shape[1] + col) * slot.itemsize
    bad[element] ^= 0x01  # lowest bit of the element's low byte
    want = expected(slot.param, row, slot.pieces[0].start + col)
    got = weights.param_view(bad, slot, p.dtype)[row, col].item()
    assert got != want and not math.isnan(got)
    with pytest.raises(VerificationError) as e:
        weights.verify(bad, storage, inv, rank=4)
    assert str(e.value) == (f"rank 4: {p.name} wrong at global index ({row}, {slot.pieces[0].start + col}): "
                            f"got {float(got)}, want {float(want)}")
