"""Transport objects for refit methods: the one place a method (refit_core/planning/methods.py) becomes
the object that moves its bytes. Importing this module imports neither torch nor a transport; `make_transport`
imports the transport's module when a rank builds it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from refit_core.errors import ConfigError
from refit_core.planning.methods import method

if TYPE_CHECKING:
    from refit_core.execution.transports.base import Transport


def make_transport(name: str, caller_buffers: bool = False) -> "Transport":
    """A new transport for the method `name` (imports its module now); `caller_buffers`: one that refits the
    caller's own tensors (refit_core/library), the method's `caller_transport` where it has one."""
    m = method(name)
    if m.refusal:
        raise ConfigError(m.refusal)
    if caller_buffers and m.caller_transport:
        module, cls = m.caller_transport.split(":")
        return getattr(importlib.import_module(module), cls)(m.name)
    module, cls = m.transport.split(":")
    factory = getattr(importlib.import_module(module), cls)
    return factory(m.name) if m.named else factory()
