"""The config of a library refit: the model, both layouts, the mode and the method, for this world."""

from __future__ import annotations

from refit_core.config import RunConfig
from refit_core.planning import methods
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

CPU_DIRECT_MIN_BYTES = 64 << 10
"""The library's zero-copy threshold for a method without GPUs (gloo over loopback TCP): a message
costs tens of microseconds there, while packing and unpacking cost two memory copies shared by every
rank of the host; with a training model's parameters laid out as DDP keeps them (reverse order, so
runs do not coalesce across parameters) 64 KiB made config-6 1.4x faster than 4 MiB
(docs/benchmarks.md, issue 24). refitctl's own runs keep `--staged-direct-min-bytes` (4 MiB)."""


def library_settings(cfg: RunConfig) -> RunConfig:
    """`cfg` with the library's defaults: on CPU, zero-copy from CPU_DIRECT_MIN_BYTES."""
    if methods.method(cfg.run.method).uses_gpus:
        return cfg
    return cfg.with_changes(staged_direct_min_bytes=CPU_DIRECT_MIN_BYTES)


def refit_config(model: ModelSpec, source: ParallelLayout, destination: ParallelLayout, *, world_size: int,
                 collocated: bool = True, method: str = "gloo", bucket_bytes: int = 1 << 30,
                 name: str = "library") -> RunConfig:
    """A RunConfig for `Refit.build`: source ranks first, destination ranks on the same ranks
    (collocated) or right after them, in refitctl's rank order (docs/architecture.md); ranks past
    the layouts idle. Raises ConfigError (one line) for layouts that cannot work."""
    mode = RefitMode.COLLOCATED if collocated else RefitMode.NON_COLLOCATED
    cfg = library_settings(RunConfig.of(name, model, source, destination, mode, method=method, iterations=1, warmup=0,
                                     gpus=world_size, bucket_bytes=bucket_bytes))
    cfg.validate(gpu_memory=False)
    return cfg
