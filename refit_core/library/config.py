"""The config of a library refit: the model, both layouts, the mode and the method, for this world."""

from __future__ import annotations

from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec


def refit_config(model: ModelSpec, source: ParallelLayout, destination: ParallelLayout, *, world_size: int,
                 collocated: bool = True, method: str = "gloo", bucket_bytes: int = 1 << 30,
                 name: str = "library") -> RunConfig:
    """A RunConfig for `Refit.build`: source ranks first, destination ranks on the same ranks
    (collocated) or right after them, in refitctl's rank order (docs/architecture.md); ranks past
    the layouts idle. Raises ConfigError (one line) for layouts that cannot work."""
    mode = RefitMode.COLLOCATED if collocated else RefitMode.NON_COLLOCATED
    cfg = RunConfig(name, model, source, destination, mode, method=method, iterations=1, warmup=0,
                    gpus=world_size, bucket_bytes=bucket_bytes)
    cfg.validate(gpu_memory=False)
    return cfg
