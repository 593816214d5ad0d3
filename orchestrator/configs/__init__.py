"""Named refit configs: the seed's 8-GPU tables (and Kimi K2), plus a user's own TOML file.

Adding a config is adding one entry to `_SEED` (or a `[configs.NAME]` table in a TOML file, see
docs/adding-a-config.md). Every entry is a complete RunConfig; per-run flags override fields.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from orchestrator import safety
from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

# The seed's model sizes: standard (configs 1-3, 5, 6 and the collocated ones) and minimal (config 4).
SEED_MODEL = ModelSpec(
    num_layers=4, hidden_size=1024, num_attention_heads=8, seq_length=512, max_position_embeddings=512,
    num_experts=16, moe_router_topk=2, moe_shared_expert_intermediate_size=512, ffn_hidden_size=2688,
    disable_bias_linear=True,
)
MINIMAL_MODEL = ModelSpec(
    num_layers=2, hidden_size=512, num_attention_heads=4, seq_length=256, max_position_embeddings=256,
    num_experts=8, moe_router_topk=2, moe_shared_expert_intermediate_size=256, ffn_hidden_size=1344,
    disable_bias_linear=True,
)


def _seed(name: str, mode: RefitMode, src: tuple[int, int], dst: tuple[int, int], use_case: str,
          model: ModelSpec = SEED_MODEL, iterations: int = 3, description: str = "") -> RunConfig:
    return RunConfig.of(
        name=name, model=model, source=ParallelLayout(tp=src[0], ep=src[1]),
        destination=ParallelLayout(tp=dst[0], ep=dst[1]), mode=mode,
        method="nvshmem" if mode is RefitMode.NON_COLLOCATED else "nccl",
        iterations=iterations, gpus=8, use_case=use_case, description=description,
    )


NC, CO = RefitMode.NON_COLLOCATED, RefitMode.COLLOCATED
_SEED: tuple[RunConfig, ...] = (
    _seed("config-1", NC, (2, 2), (2, 1), "Test EP refit",
          description="Expert Parallelism resharding from EP=2 to EP=1 while keeping TP=2 constant"),
    _seed("config-2", NC, (2, 2), (2, 2), "Full utilization",
          description="Both models use 4 GPUs each (TP=2, EP=2): weight transfer between separate GPU sets"),
    _seed("config-3", NC, (4, 1), (2, 1), "Test TP refit",
          description="Tensor Parallelism resharding from TP=4 to TP=2 while keeping EP=1 constant"),
    _seed("config-4", NC, (2, 1), (1, 1), "Minimal test", model=MINIMAL_MODEL, iterations=2,
          description="Fastest validation that NVSHMEM works"),
    _seed("config-5", NC, (4, 1), (4, 1), "TP-only, full use"),
    _seed("config-6", NC, (1, 4), (1, 2), "EP-only refit"),
    _seed("collocated-1", CO, (4, 2), (2, 4), "TP<->EP swap",
          description="Swapping from TP-heavy (TP=4, EP=2) to EP-heavy (TP=2, EP=4) on the same 8 GPUs"),
    _seed("collocated-2", CO, (8, 1), (4, 2), "High TP -> balanced"),
    _seed("collocated-3", CO, (4, 2), (4, 1), "Scale down"),
    _seed("collocated-4", CO, (2, 2), (2, 1), "Small models"),
)

SWEEPS: dict[str, tuple[str, ...]] = {
    "8gpu": tuple(c.name for c in _SEED),
    "non-collocated": tuple(c.name for c in _SEED if c.layouts.mode is NC),
    "collocated": tuple(c.name for c in _SEED if c.layouts.mode is CO),
}


def _extra_presets() -> tuple[RunConfig, ...]:
    try:
        from orchestrator.configs.kimi_k2 import KIMI_K2_CONFIGS
    except ImportError:
        return ()
    return KIMI_K2_CONFIGS


def builtin_configs() -> dict[str, RunConfig]:
    return {c.name: c for c in (*_SEED, *_extra_presets())}


def load_user_configs(path: Path) -> dict[str, RunConfig]:
    """Read `[configs.NAME]` tables from a TOML file; each may start `from = "config-1"`."""
    text = safety.read_text("--config-file", path)  # bounded: a folder, /dev/zero or a binary is one line
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML ({e}): fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests arrays or tables too deeply: that is not a config file") from None
    tables = data.get("configs")
    unknown = set(data) - {"configs"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown top-level key {sorted(unknown)[0]!r}: put configs under [configs.NAME]")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"config file {path} has no [configs.NAME] table: add one (see docs/adding-a-config.md)")
    base = builtin_configs()
    out: dict[str, RunConfig] = {}
    for name, table in tables.items():
        safety.name(f"config file {path}: config name", name)  # it becomes a directory name and a job name
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: configs.{name} must be a table")
        out[name] = config_from_table(name, table, {**base, **out}, str(path))
    return out


def config_from_table(name: str, table: dict[str, Any], known: dict[str, RunConfig], where: str) -> RunConfig:
    """Build a RunConfig from a flat table of seed flag names (underscores or dashes)."""
    from orchestrator.configs.flags import apply_overrides

    table = {k.replace("-", "_"): v for k, v in table.items()}
    parent = table.pop("from", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{where}: configs.{name}: from = {parent!r} must be a config's name in quotes, "
                              f"e.g. from = \"config-1\"")
        if parent not in known:
            raise ConfigError(f"{where}: configs.{name} starts from unknown config {parent!r}: use one of {', '.join(known)}")
        start = known[parent]
    else:
        start = _seed(name, NC, (1, 1), (1, 1), "", model=ModelSpec(disable_bias_linear=True))
    return apply_overrides(dataclasses.replace(start, name=name), table, where=f"{where}: configs.{name}")


def resolve(name: str, user_file: Path | None = None) -> RunConfig:
    configs = builtin_configs()
    if user_file is not None:
        configs.update(load_user_configs(user_file))
    if name not in configs:
        raise ConfigError(f"unknown config {name!r}: use one of {', '.join(configs)} (refitctl list shows them)")
    return configs[name]
