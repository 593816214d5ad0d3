"""`refitctl plan` and `refitctl list`: what a config is and what it would move, without running anything."""

from __future__ import annotations

import argparse
import json
from typing import Callable

from rich.table import Table
from rich.text import Text

from orchestrator import configs
from orchestrator.actions.args import add_config_args, command, config_file, output_path
from orchestrator.actions.output import wide_console
from orchestrator.actions.resolve import resolve_config
from orchestrator.submission.prepared import device_map, plan_json
from orchestrator.views.planview import print_plan
from orchestrator.views.report import write_plan_png
from refit_core.errors import ConfigError
from refit_core.planning.layout import gpus_needed


@command("plan", "print the layout and transfer plan of a config (no GPU, nothing runs)")
def _plan(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--detail", action="store_true", default=None,
                   help="also each rank's GPU and bytes (shown anyway for worlds of at most 16 ranks)")
    p.add_argument("--check", action="store_true", help="also verify the plan's coverage (every element once)")
    p.add_argument("--png", type=output_path("--png", parents=True), metavar="FILE",
                   help="also write the transfer matrix as a heatmap PNG (needs matplotlib: refitctl[report])")
    p.add_argument("--local-gpus", type=int, metavar="N",
                   help="place the ranks as a local run does on a machine with N GPUs (default: as SLURM places "
                        "them on nodes of --gpus-per-node GPUs)")

    def run(args: argparse.Namespace) -> int:
        cfg = resolve_config(args)
        choice = cfg.relay_choice()
        plan = choice.plan
        if args.local_gpus is not None and not 0 <= args.local_gpus <= 65536:
            raise ConfigError(f"--local-gpus must be 0..65536, got {args.local_gpus}")
        gpus = device_map(cfg, plan, args.local_gpus)  # the pre-flight: a layout the method cannot run fails here
        if args.check:
            from refit_core.planning.validate import check_plan

            check_plan(plan)
        if args.png:
            write_plan_png(args.png, plan_json(cfg, plan), cfg.name)
        if args.json:
            print(json.dumps(plan_json(cfg, plan, gpus), indent=1))
        else:
            console = wide_console()
            print_plan(console, cfg, plan, gpus, args.detail, choice)
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
        nc = [c for c in all_cfgs.values() if c.layouts.mode.value == "non-collocated"]
        co = [c for c in all_cfgs.values() if c.layouts.mode.value == "collocated"]
        for title, rows, idle in (("Non-Collocated Configurations", nc, True), ("Collocated Configurations", co, False)):
            t = Table(title=title)
            for col in ("Config", "Source", "Target", "Total GPUs", *(["Idle GPUs"] if idle else []), "Method", "Use Case"):
                t.add_column(col)
            for c in rows:
                need = gpus_needed(c.layouts.mode, c.layouts.source, c.layouts.destination)
                t.add_row(
                    c.name,
                    f"TP={c.layouts.source.tp}, EP={c.layouts.source.ep}" + (f", PP={c.layouts.source.pp}" if c.layouts.source.pp > 1 else "") + f" ({c.layouts.source.size})",
                    f"TP={c.layouts.destination.tp}, EP={c.layouts.destination.ep}" + (f", PP={c.layouts.destination.pp}" if c.layouts.destination.pp > 1 else "") + f" ({c.layouts.destination.size})",
                    str(need), *([str(c.hardware.gpus - need)] if idle else []), c.run.method, c.use_case,
                )
            console.print(t)
        return 0

    return run


COMMANDS = (_plan, _list)
