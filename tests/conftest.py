"""Shared test helpers: small models, and skips for what this machine lacks."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A model small enough for many processes on 2 CPU cores, with every kind of weight.
SMALL_FLAGS = {
    "num_layers": 2, "hidden_size": 256, "num_attention_heads": 8, "ffn_hidden_size": 512,
    "num_experts": 8, "moe_shared_expert_intermediate_size": 256, "seq_length": 128,
    "max_position_embeddings": 128, "vocab_size": 1000,
}


# Tests that must not run at the same time as each other under pytest-xdist (`make test` runs
# `-n 2 --dist loadgroup`): one group runs on one worker, in order. The SLURM tests share the one
# local cluster (2 nodes: two jobs at once would queue behind each other); the fault tests assert
# bounded end times and kill process groups, so they take turns (docs/testing.md).
SERIAL_GROUPS = {"test_bounded_waits": "timing", "test_faults": "timing"}


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    import pytest

    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        group = "slurm" if item.get_closest_marker("slurm") else SERIAL_GROUPS.get(module)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
