"""What every destination byte must be, and the check after each iteration.

BF16 destinations: the deterministic values themselves (weights.verify). FP8 destinations: each
quantised weight's FP8 bytes and `weight_scale_inv` equal, bitwise, to the reference quantisation
(quantize.py) of the WHOLE global tensor built from the same deterministic values. The reference
is computed once per rank at set-up, one global tensor at a time, and only the slices this rank
holds are kept (the shard's rows, and the block rows they touch), so a scale formed from a gather
of partial maxima is checked against the block maximum taken over the whole tensor. The BF16
parameters of an FP8 destination (embeddings, norms, router, output layer) are checked as in BF16.
"""

from __future__ import annotations

from typing import Callable

import torch

from refit_core.errors import VerificationError
from refit_core.execution import weights
from refit_core.execution.quantize import FP8, quantise
from refit_core.planning.storage import Slot, Storage
from refit_core.planning.wire import scale_weights, shard_storage
from refit_core.planning.plan import Plan

Check = Callable[[torch.Tensor, Storage], None]


def _along(slot: Slot, device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(pc.start, pc.stop, device=device, dtype=torch.int64) for pc in slot.pieces])


class Fp8Reference:
    """Expected bytes of this rank's FP8 weight and scale slots (uint8 and int32 views)."""

    def __init__(self, plan: Plan, rank: int, device: torch.device) -> None:
        self.plan, self.rank = plan, rank
        self.weight_of = scale_weights(plan)
        self.scale_of = {wi: si for si, wi in self.weight_of.items()}
        self.expected: dict[int, torch.Tensor] = {}
        storage = shard_storage(plan, "destination", rank)
        held = storage.by_param if storage is not None else {}
        for wi, si in self.scale_of.items():
            if wi not in held and si not in held:
                continue
            p = plan.inventory.params[wi]
            q, s = quantise(weights.global_values(p, wi, device))
            d = p.split_dim
            if wi in held:
                self.expected[wi] = q.view(torch.uint8).index_select(d, _along(held[wi], device))
            if si in held:
                self.expected[si] = s.view(torch.int32).index_select(d, _along(held[si], device))

    def __call__(self, buf: torch.Tensor, storage: Storage) -> None:
        plain = []
        for slot in storage.slots:
            want = self.expected.get(slot.param)
            if want is None:
                plain.append(slot)
                continue
            got = buf[slot.offset: slot.offset + slot.nbytes].view(want.dtype).view(slot.shape)
            if not torch.equal(got, want):
                self._fail(slot, got, want)
        if plain:
            weights.verify(buf, Storage(tuple(plain), storage.nbytes), self.plan.inventory, self.rank)

    def _fail(self, slot: Slot, got: torch.Tensor, want: torch.Tensor) -> None:
        p = self.plan.params[slot.param]
        bad = torch.nonzero(got != want)[0].tolist()
        along = _along(slot, got.device)
        d = p.split_dim
        idx = list(bad)
        idx[d] = int(along[bad[d]])
        g, w = int(got[tuple(bad)]), int(want[tuple(bad)])
        if slot.param in self.weight_of:
            as_float = lambda v: torch.tensor([v], dtype=torch.int32).view(torch.float32).item()  # noqa: E731
            raise VerificationError(f"rank {self.rank}: {p.name} wrong at block {tuple(idx)}: got {as_float(g)!r}, "
                                    f"want {as_float(w)!r} (float32 scale)")
        as_float = lambda v: torch.tensor([v], dtype=torch.uint8).view(FP8).float().item()  # noqa: E731
        raise VerificationError(f"rank {self.rank}: {p.name} wrong at global index {tuple(idx)}: got FP8 byte "
                                f"0x{g:02x} ({as_float(g)}), want 0x{w:02x} ({as_float(w)})")


def destination_check(plan: Plan, rank: int, device: torch.device) -> Check:
    """The check of this rank's destination shards after an iteration (raises VerificationError)."""
    if plan.destination is None:
        return lambda buf, storage: weights.verify(buf, storage, plan.inventory, rank)
    return Fp8Reference(plan, rank, device)
