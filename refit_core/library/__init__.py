"""refitctl as a library: build a refit once, call it every training step on your own tensors.

`Refit.build(config, source, destination)` plans and binds; `refit()` moves the bytes (and checks
them unless `verify=False`). `refit_config(...)` makes the config from the two layouts.
refit_core/megatron wraps it with Megatron-Core's `swap_model_weights` signature. docs/library.md.
"""

import refit_core.execution.transports.staged  # noqa: F401  (the transport of caller tensors: imported here, not in a first call)
from refit_core.library.config import refit_config
from refit_core.library.refit import Refit, RefitStats
from refit_core.library.tensors import BoundShards

__all__ = ["Refit", "RefitStats", "BoundShards", "refit_config"]
