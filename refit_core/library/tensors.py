"""The caller's tensors as refitctl's shards: one byte buffer per role, each parameter at its offset.

A transport moves byte blocks between two flat buffers (refit_core/execution/storage.py). A
caller's parameters become such a buffer in one of two ways, decided once when a refit is built:

- in place: every tensor already lives in ONE storage, in the inventory's dtype and contiguous
  (Megatron-Core's DistributedDataParallel keeps its parameters as views of one contiguous
  `param_data` buffer; so does a model a previous refit adopted). That storage is the buffer; the
  slots are where the tensors sit in it, whatever their order and padding. Nothing is copied.
- adopted: otherwise one buffer in refitctl's own layout is allocated, each tensor is copied into
  its slot once and then made a view of it (`tensor.data = view`), so the old storage is freed
  and the model keeps working on the same bytes the refit moves. No second copy is kept; during
  the adoption the role's old tensors and the new buffer coexist, so the peak is twice the role's
  shard bytes once, at build. Destination tensors are rebound without copying their old values:
  the first refit writes every element (the plan covers each exactly once). A tensor
  held in another dtype (a bare GPTModel's fp32 norms) becomes the inventory's dtype, as
  Megatron-LM's Float16Module makes it anyway; `BoundShards.cast` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

from refit_core.errors import ConfigError
from refit_core.planning.storage import Storage
from refit_core.execution.weights import param_view, torch_dtype
from refit_core.planning.model import Inventory


@dataclass(frozen=True)
class BoundShards:
    """One role's shards on this rank: the bytes that hold them and where each parameter sits."""

    buffer: torch.Tensor  # uint8, the caller's storage (in place) or the adopted buffer
    storage: Storage  # slots at their byte offsets in `buffer`
    in_place: bool  # True: the caller's storage as it was; False: adopted (copied once, tensors rebound)
    cast: int = 0  # tensors adopted from another dtype


def bind_shards(tensors: Mapping[str, torch.Tensor], layout: Storage, inv: Inventory, role: str,
                keep_values: bool = True) -> BoundShards:
    """This rank's `role` tensors (by refitctl parameter name) as shards of `layout`'s parameters.

    `keep_values=False` adopts without copying the old values (a destination: the refit writes every
    element of it). Raises ConfigError naming the first tensor that is missing, unknown or of the
    wrong shape."""
    named = _check_names(tensors, layout, inv, role)
    found = _in_place(named, layout, inv)
    if found is not None:
        return found
    return _adopt(named, layout, inv, keep_values)


def _check_names(tensors: Mapping[str, torch.Tensor], layout: Storage, inv: Inventory,
                 role: str) -> dict[int, torch.Tensor]:
    """{inventory index: tensor} for every slot of `layout`, shapes checked."""
    want = {inv.params[s.param].name: s for s in layout.slots}
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise ConfigError(f"{role} tensor {extra[0]!r} is not a parameter this rank holds in the {role} layout "
                          f"({len(want)} expected): check the layout and the parameter names")
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise ConfigError(f"{role} tensors lack {missing[0]!r} ({len(missing)} missing): pass every parameter "
                          f"this rank holds in the {role} layout")
    out = {}
    for name, slot in want.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(slot.shape):
            raise ConfigError(f"{role} tensor {name!r} has shape {tuple(t.shape)}, this rank's shard of it is "
                              f"{tuple(slot.shape)}: the layout given is not the one the tensors were built for")
        out[slot.param] = t
    return out


def shared_offsets(tensors: Mapping[Any, torch.Tensor], dtype: torch.dtype) -> tuple[dict[Any, int], int] | None:
    """({key: byte offset}, storage bytes) when every tensor is a contiguous `dtype` view of ONE storage
    and no two overlap (a parameter buffer such as DDP's `param_data`), else None. Pure: what binding
    in place uses, and what a rank can tell its peers before anything is planned."""
    first = next(iter(tensors.values()), None)
    if first is None:
        return None
    base = first.untyped_storage()
    for t in tensors.values():
        if (t.dtype != dtype or not t.is_contiguous() or t.untyped_storage().data_ptr() != base.data_ptr()
                or t.device != first.device):
            return None
    spans = sorted((t.storage_offset() * t.element_size(), t.numel() * t.element_size(), k)
                   for k, t in tensors.items())
    for (a, n, _), (b, _, _) in zip(spans, spans[1:]):
        if a + n > b:
            return None  # tensors overlap: not a parameter buffer
    return {k: off for off, _, k in spans}, base.nbytes()


def _in_place(named: dict[int, torch.Tensor], layout: Storage, inv: Inventory) -> BoundShards | None:
    """The caller's one storage as the buffer, or None if the tensors do not share one (or overlap)."""
    dtypes = {inv.params[i].dtype for i in named}
    found = shared_offsets(named, torch_dtype(dtypes.pop())) if len(dtypes) == 1 else None
    if found is None:
        return None
    offsets, nbytes = found
    first = next(iter(named.values()))
    buf = torch.empty(0, dtype=torch.uint8, device=first.device).set_(first.untyped_storage())
    return BoundShards(buf, at_offsets(layout, offsets, nbytes), True)


def at_offsets(layout: Storage, offsets: Mapping[int, int], nbytes: int) -> Storage:
    """`layout`'s slots at the given byte offsets (by parameter index), in offset order, in a buffer of `nbytes`."""
    slots = sorted((replace(s, offset=offsets[s.param]) for s in layout.slots), key=lambda s: s.offset)
    return Storage(tuple(slots), nbytes)


def _adopt(named: dict[int, torch.Tensor], layout: Storage, inv: Inventory, keep_values: bool) -> BoundShards:
    """Copy each tensor into a new buffer in refitctl's layout once (unless its values are not kept),
    then make it a view of its slot."""
    device = next(iter(named.values())).device if named else torch.device("cpu")
    buf = torch.empty(max(layout.nbytes, 1), dtype=torch.uint8, device=device)
    cast = 0
    with torch.no_grad():
        for slot in layout.slots:
            t = named[slot.param]
            view = param_view(buf, slot, inv.params[slot.param].dtype)
            if keep_values:
                view.copy_(t)
            cast += t.dtype != view.dtype
            t.data = view
    return BoundShards(buf, layout, False, cast)
