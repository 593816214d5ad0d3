"""`refitctl`: the command users type. Errors of the project become one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator import configs, safety
from orchestrator.configs.flags import add_flags, apply_overrides, overrides_from_args
from orchestrator.views.planview import device_map, plan_json, print_plan
from refit_core.config import RunConfig
from refit_core.errors import ConfigError, RefitError
from refit_core.planning.layout import gpus_needed


class UsageError(ConfigError):
    """A command line argparse cannot parse (unknown option, missing value, bad choice)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is a UsageError: one line and exit code 2 like every other error, not usage text."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message}: see `{self.prog} --help`")


COMMANDS: dict[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str) -> Callable:
    """Register a subcommand: the decorated function adds its arguments and returns its runner."""

    def wrap(fn: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]) -> Callable:
        fn.__doc__ = help
        COMMANDS[name] = fn
        return fn

    return wrap


def wide_console() -> Console:
    """A console at least 120 columns wide, so tables stay readable when piped; it reads no markup in
    what it prints, so a user's name or path is shown as written (orchestrator/safety.py)."""
    return safety.console(120)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a named config (refitctl list), or none with seed flags")
    p.add_argument("--config-file", type=config_file, help="TOML file with [configs.NAME] tables")
    p.add_argument("--ceilings", type=Path, metavar="FILE", default=None,
                   help="link figures measured on this machine (the JSON benchmarks/gpu_bench.py writes) for the "
                        "predicted time and bound; flags such as --intra-node-gbps still win (env REFITCTL_CEILINGS)")
    add_flags(p)


def config_file(text: str) -> Path:
    """argparse type of --config-file: a path without control characters (configs.load_user_configs reads it)."""
    return safety.path_text("--config-file", text)


def output_path(flag: str, parents: bool = False) -> Callable[[str], Path]:
    """argparse type of a file refitctl writes: its folder exists (or, with `parents`, can be made), it is
    not a folder."""
    return lambda text: safety.output_file(flag, text, parents)


def resolve_config(args: argparse.Namespace, gpu_memory: bool = True) -> RunConfig:
    """The named config (or the default base for bare flags), with the flags applied and validated
    (`gpu_memory=False`: not yet against --gpu-memory-gb; `submit` checks memory once it knows where it runs)."""
    if args.config:
        cfg = configs.resolve(args.config, args.config_file)
    else:
        cfg = configs.config_from_table("custom", {}, configs.builtin_configs(), "command line")
    given = overrides_from_args(args)
    cfg = link_figures_from(apply_overrides(cfg, given), args, given)
    cfg.validate(gpu_memory)
    return cfg


LINK_KEYS = ("intra_node_gbps", "intra_node_both_gbps", "inter_node_gbps", "local_copy_gbps")


def link_figures_from(cfg: RunConfig, args: argparse.Namespace, given: dict[str, object]) -> RunConfig:
    """The config with the time model's figures from --ceilings (or REFITCTL_CEILINGS), flags
    winning, and a note of where they came from."""
    import os

    from refit_core.planning.ceilings import load_ceilings

    path = getattr(args, "ceilings", None) or (Path(os.environ["REFITCTL_CEILINGS"])
                                               if os.environ.get("REFITCTL_CEILINGS") else None)
    flags = [k for k in LINK_KEYS if k in given]
    if path is not None:
        cfg = cfg.with_ceilings(load_ceilings(path, cfg.method), keep=flags)
    if flags:
        named = ", ".join("--" + k.replace("_", "-") for k in flags)
        cfg = cfg.with_changes(link_source=f"{cfg.link_source}; flags {named}" if cfg.link_source
                               else f"flags {named}, defaults for the rest")
    return cfg


@command("plan", "print the layout and transfer plan of a config (no GPU, nothing runs)")
def _plan(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--check", action="store_true", help="also verify the plan's coverage (every element once)")
    p.add_argument("--png", type=output_path("--png", parents=True), metavar="FILE",
                   help="also write the transfer matrix as a heatmap PNG (needs matplotlib: refitctl[report])")
    p.add_argument("--local-gpus", type=int, metavar="N",
                   help="place the ranks as a local run does on a machine with N GPUs (default: as SLURM places "
                        "them on nodes of --gpus-per-node GPUs)")

    def run(args: argparse.Namespace) -> int:
        cfg = resolve_config(args)
        plan = cfg.plan()
        if args.local_gpus is not None and not 0 <= args.local_gpus <= 65536:
            raise ConfigError(f"--local-gpus must be 0..65536, got {args.local_gpus}")
        gpus = device_map(cfg, plan, args.local_gpus)  # the pre-flight: a layout the method cannot run fails here
        if args.check:
            from refit_core.planning.validate import check_plan

            check_plan(plan)
        if args.png:
            from orchestrator.commands.report import write_plan_png

            write_plan_png(args.png, plan_json(cfg, plan), cfg.name)
        if args.json:
            print(json.dumps(plan_json(cfg, plan, gpus), indent=1))
        else:
            console = wide_console()
            print_plan(console, cfg, plan, gpus)
            if args.check:
                console.print(Text.assemble("Coverage: every destination element exactly once ", ("OK", "green")))
            if args.png:
                console.print(f"Transfer matrix heatmap: {args.png}", highlight=False)
        return 0

    return run


@command("list", "list the named configs (the seed's tables)")
def _list(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument("--config-file", type=config_file, help="also list configs from this TOML file")

    def run(args: argparse.Namespace) -> int:
        all_cfgs = configs.builtin_configs()
        if args.config_file:
            all_cfgs.update(configs.load_user_configs(args.config_file))
        console = wide_console()
        nc = [c for c in all_cfgs.values() if c.mode.value == "non-collocated"]
        co = [c for c in all_cfgs.values() if c.mode.value == "collocated"]
        for title, rows, idle in (("Non-Collocated Configurations", nc, True), ("Collocated Configurations", co, False)):
            t = Table(title=title)
            for col in ("Config", "Source", "Target", "Total GPUs", *(["Idle GPUs"] if idle else []), "Method", "Use Case"):
                t.add_column(col)
            for c in rows:
                need = gpus_needed(c.mode, c.source, c.destination)
                t.add_row(
                    c.name,
                    f"TP={c.source.tp}, EP={c.source.ep}" + (f", PP={c.source.pp}" if c.source.pp > 1 else "") + f" ({c.source.size})",
                    f"TP={c.destination.tp}, EP={c.destination.ep}" + (f", PP={c.destination.pp}" if c.destination.pp > 1 else "") + f" ({c.destination.size})",
                    str(need), *([str(c.gpus - need)] if idle else []), c.method, c.use_case,
                )
            console.print(t)
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = _Parser(prog="refitctl", description="Benchmark MoE weight refit between parallel layouts.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in COMMANDS.items():
        # allow_abbrev=False: `--num-lay 3` is an unknown option, not a silent --num-layers 3
        sp = sub.add_parser(name, help=fn.__doc__, description=fn.__doc__, allow_abbrev=False)
        sp.set_defaults(run=fn(sp))
    return parser


def _load_plugins() -> None:
    """Import the modules that register more subcommands (submit, sweep, runs, report, ...)."""
    import importlib

    for mod in ("orchestrator.commands.run", "orchestrator.commands.report"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise



def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (a test's StringIO)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}: see `refitctl {args.command} --help`")
        return args.run(args)
    except RefitError as e:
        print(f"refitctl: error: {safety.one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `refitctl plan --json | head -1`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except OSError as e:  # the last line of defence: a file system's refusal (full, read-only, ...) in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"refitctl: error: {safety.one_line(where + (e.strerror or str(e)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refitctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # run as `python -m orchestrator.cli`: use the imported module, whose registry the plugins fill
    from orchestrator.cli import main as _main

    sys.exit(_main())
