"""Measured link ceilings (benchmarks/gpu_bench.py writes them) as the time model's bandwidths.

A ceilings file is JSON with a `ceilings` object of named GB/s figures (10^9 bytes per second,
bytes delivered), measured on one machine:

    local_copy            one device-to-device copy on one GPU
    peer_copy_one_way     copy_ from GPU 0 into GPU 1, nothing else running
    peer_copy_both_ways   each direction's rate while GPU 0 -> 1 and 1 -> 0 copy at once
    nccl_one_way          NCCL send/recv GPU 0 -> GPU 1 (two processes)
    nccl_both_ways        each direction's rate while both send and receive at once
    quantise              FP8: the fused quantiser's quantise pass on one GPU, GB/s of BF16 read
    quantise_amax         FP8: its scale pass (block maxima), GB/s of BF16 read

plus `device` and `date` (which machine). A benchmark result file has the same `ceilings`
object, so it serves as a ceilings file too. The refit methods move bytes between GPUs with
different engines, so the model takes the figures of the method at hand: NCCL's for nccl (and
naive, which uses NCCL), the peer copy's for nvshmem (its kernels write peers' memory directly).
Pure: a dict in, bandwidths out; reading the file is `load_ceilings`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refit_core.errors import ConfigError
from refit_core.planning import methods

NAMES = ("local_copy", "peer_copy_one_way", "peer_copy_both_ways", "nccl_one_way", "nccl_both_ways", "quantise",
         "quantise_amax")


@dataclass(frozen=True)
class LinkFigures:
    """What the time model takes from measured ceilings for one method (GB/s, None: not measured)."""

    intra_node_gbps: float | None
    intra_node_both_gbps: float | None
    local_copy_gbps: float | None
    source: str
    quantise_gbps: float | None = None
    amax_gbps: float | None = None


def _engine(method: str) -> str:
    return methods.method(method).ceiling or "nccl"


def link_figures(data: Any, method: str, where: str) -> LinkFigures:
    """The intra-node and local-copy bandwidths for `method` from a ceilings object (parsed JSON)."""
    if not isinstance(data, dict) or not isinstance(data.get("ceilings"), dict):
        raise ConfigError(f"ceilings file {where} has no \"ceilings\" object: give the JSON that "
                          "benchmarks/gpu_bench.py writes")
    ceilings = data["ceilings"]
    values: dict[str, float] = {}
    for name in NAMES:
        v = ceilings.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"ceilings file {where}: {name} must be a positive number of GB/s, got {v!r}")
        values[name] = float(v)
    engine = _engine(method)
    one, both = values.get(f"{engine}_one_way"), values.get(f"{engine}_both_ways")
    if one is None and both is None and "local_copy" not in values:
        raise ConfigError(f"ceilings file {where} holds none of {', '.join(NAMES)}: "
                          "run benchmarks/gpu_bench.py on the machine to measure them")
    device = data.get("device") if isinstance(data.get("device"), str) else "unknown device"
    date = data.get("date") if isinstance(data.get("date"), str) else "undated"
    used = [n for n in (f"{engine}_one_way", f"{engine}_both_ways", "local_copy", "quantise", "quantise_amax")
            if n in values]
    return LinkFigures(one, both, values.get("local_copy"),
                       f"measured ceilings {where} ({device[:60]}, {date}: {', '.join(used)})",
                       values.get("quantise"), values.get("quantise_amax"))


def load_ceilings(path: Path, method: str) -> LinkFigures:
    """`link_figures` of a file; a missing or broken file is a one-line ConfigError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"ceilings file {path} not found: check the --ceilings path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"ceilings file {path} is not readable JSON ({e.__class__.__name__}): "
                          "give the file benchmarks/gpu_bench.py wrote") from None
    return link_figures(data, method, str(path))
