"""A plan as bytes: made once where a run is resolved, loaded by every rank, which then plans nothing.

The orchestrator writes `plan_to_bytes(plan)` into the run directory (RunPaths.plan_file) and each rank
reads it back with `plan_from_bytes`; a rank never recomputes the inventory, the world or the plan.
The form loads faster than planning (Kimi K2's 358,277 transfers: a fraction of the 3.8 s the plan
takes) and runs no code from the file: a magic line, a JSON header holding every frozen value of the
plan but its transfers (only the types below may appear in it), then the transfers as eight columns of
little-endian int64 (`Transfer`'s fields, the last its hop: 0 from a source, 1 forwarded by a relay). Pure.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from array import array
from enum import Enum
from itertools import repeat
from typing import Any

from refit_core.errors import RunDirError
from refit_core.planning.layout import ParallelLayout, Placement, RefitMode, WorldLayout
from refit_core.planning.model import Inventory, ModelSpec, ParamSpec
from refit_core.planning.nodes import NodeMap
from refit_core.planning.plan import Plan, Transfer
from refit_core.planning.precision import BlockGather

MAGIC = b"refitctl-plan 2\n"  # 2: a hop column (relays)
_TYPES: dict[str, type] = {t.__name__: t for t in (Plan, Inventory, ModelSpec, ParamSpec, WorldLayout, Placement,
                                                    ParallelLayout, NodeMap, BlockGather)}
_ENUMS: dict[str, type[Enum]] = {"RefitMode": RefitMode}
_COLUMNS = len(Transfer._fields)
_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(ParamSpec))  # shape second: the one tuple
DAMAGED = "submit the run again (the plan is written when a run is submitted)"


def _encode(value: Any) -> Any:
    if isinstance(value, Inventory):  # tens of thousands of parameters (Kimi K2): one row each, no field names
        return {"@": "Inventory", "spec": _encode(value.spec), "vocab": value.vocab,
                "params": {"@rows": [[getattr(p, f) for f in _PARAM_FIELDS] for p in value.params]}}
    if isinstance(value, Enum):
        return {"@enum": type(value).__name__, "value": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _TYPES:
            raise TypeError(f"a plan holds no {name}")
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if not (name == "Plan" and f.name == "transfers")}
        return {"@": name, **fields}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a plan holds no {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    if "@rows" in value:
        return tuple(ParamSpec(name, tuple(shape), *rest) for name, shape, *rest in value["@rows"])
    if "@enum" in value:
        return _ENUMS[value["@enum"]](value["value"])
    cls = _TYPES[value["@"]]
    return cls(**{k: _decode(v) for k, v in value.items() if k != "@"})


def plan_to_bytes(plan: Plan) -> bytes:
    """The plan in the form `plan_from_bytes` reads."""
    header = _encode(plan)
    header["transfers"] = len(plan.transfers)
    columns = [array("q", (t[i] for t in plan.transfers)) for i in range(_COLUMNS)]
    if sys.byteorder != "little":
        for c in columns:
            c.byteswap()
    text = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + len(text).to_bytes(8, "little") + text + b"".join(c.tobytes() for c in columns)


def plan_from_bytes(data: bytes, where: object = "the plan") -> Plan:
    """The plan `plan_to_bytes` wrote; anything else (truncated, another version, a foreign type) is one
    RunDirError naming `where`."""
    try:
        if not data.startswith(MAGIC):
            raise ValueError("is not a refitctl plan (or one of another version)")
        start = len(MAGIC) + 8
        size = int.from_bytes(data[len(MAGIC): start], "little")
        header = json.loads(data[start: start + size])
        n = header.pop("transfers")
        body = memoryview(data)[start + size:]
        if not isinstance(n, int) or len(body) != n * _COLUMNS * 8:
            raise ValueError("is truncated")
        columns = []
        for i in range(_COLUMNS):
            c = array("q")
            c.frombytes(body[i * n * 8: (i + 1) * n * 8])
            if sys.byteorder != "little":
                c.byteswap()
            columns.append(c)
        fields = {k: _decode(v) for k, v in header.items() if k != "@"}
        if header.get("@") != "Plan":
            raise ValueError("is not a refitctl plan (its header holds no plan)")
        # tuple.__new__ straight from the columns: no Python call per transfer (Transfer._make is one)
        return Plan(transfers=tuple(map(tuple.__new__, repeat(Transfer), zip(*columns))), **fields)
    except RunDirError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = str(e) if isinstance(e, ValueError) and str(e).startswith("is ") else f"is damaged ({e!r:.80})"
        raise RunDirError(where, problem, DAMAGED) from None
