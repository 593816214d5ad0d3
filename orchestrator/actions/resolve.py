"""A run's config and cluster options from the command line, with a site's defaults and a user's overrides from
the environment read here, once (refit_core/environment.py): what the rest of a command sees is data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator import configs, safety
from orchestrator.actions.args import given_options
from orchestrator.configs.flags import apply_overrides, overrides_from_args
from orchestrator.submission.runspec import ClusterOptions, parse_env
from refit_core import environment
from refit_core.config import RunConfig
from refit_core.planning.ceilings import load_ceilings


def run_settings(args: argparse.Namespace) -> dict[str, str]:
    """The variables that may override run settings (config.ENV_OVERRIDES): this process's, then the tasks'
    own `--env KEY=VALUE` (what the tasks will see wins), read once, here."""
    return {**environment.snapshot(), **dict(parse_env(getattr(args, "env", None) or []))}


def resolve_config(args: argparse.Namespace, gpu_memory: bool = True) -> RunConfig:
    """The named config (or the default base for bare flags), with the flags applied and validated
    (`gpu_memory=False`: not yet against --gpu-memory-gb; `submit` checks memory once it knows where it runs)."""
    if args.config:
        cfg = configs.resolve(args.config, args.config_file)
    else:
        cfg = configs.config_from_table("custom", {}, configs.builtin_configs(), "command line")
    given = overrides_from_args(args)
    cfg = link_figures_from(apply_overrides(cfg, given), args, given).with_environment(run_settings(args))
    cfg.validate(gpu_memory)
    return cfg


LINK_KEYS = ("intra_node_gbps", "intra_node_both_gbps", "inter_node_gbps", "local_copy_gbps")


def link_figures_from(cfg: RunConfig, args: argparse.Namespace, given: dict[str, object]) -> RunConfig:
    """The config with the time model's figures from --ceilings (or REFITCTL_CEILINGS), flags
    winning, and a note of where they came from."""
    env_path = environment.get("REFITCTL_CEILINGS")
    path = getattr(args, "ceilings", None) or (Path(env_path) if env_path else None)
    flags = [k for k in LINK_KEYS if k in given]
    if path is not None:
        cfg = cfg.with_ceilings(load_ceilings(path, cfg.run.method), keep=flags)
    if flags:
        named = ", ".join("--" + k.replace("_", "-") for k in flags)
        cfg = cfg.with_changes(link_source=f"{cfg.hardware.link_source}; flags {named}" if cfg.hardware.link_source
                               else f"flags {named}, defaults for the rest")
    return cfg

# Defaults a site can set once, in the environment, instead of on every command.
ENV_DEFAULTS = {"cluster": "REFITCTL_CLUSTER", "partition": "REFITCTL_PARTITION", "account": "REFITCTL_ACCOUNT",
                "qos": "REFITCTL_QOS", "time": "REFITCTL_TIME"}


def runs_root(args: argparse.Namespace) -> Path:
    """--runs-dir, else $REFITCTL_RUNS_DIR, else ./runs: checked (a file there is one line, not a traceback)."""
    if args.runs_dir is not None:
        return safety.directory("--runs-dir", args.runs_dir)
    if (env_dir := environment.get("REFITCTL_RUNS_DIR")) is not None:
        return safety.directory("REFITCTL_RUNS_DIR", env_dir)
    return safety.directory("the runs directory", "runs")


def cluster_options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> ClusterOptions:
    env = {k: v for k, name in ENV_DEFAULTS.items() if (v := environment.get(name)) is not None}
    merged = {**env, **(base or {}), **given_options(args)}
    return ClusterOptions.from_json(merged)
