"""`refitctl render`: a standalone sbatch script for a config (orchestrator/submission/render.py writes it)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from orchestrator.actions.args import add_cluster_args, add_config_args, command, output_path
from orchestrator.actions.launch import prepare_for
from orchestrator.actions.output import command_line
from orchestrator.actions.resolve import cluster_options, resolve_config
from orchestrator.submission import clusters
from orchestrator.submission.render import render_sbatch
from refit_core.errors import ConfigError


@command("render", "write a standalone sbatch script for a config (refitctl render config-1 > job.sbatch)")
def _render(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    add_config_args(p)
    add_cluster_args(p)
    p.add_argument("--python", default=None,
                   help="python on the nodes, with refitctl installed (default: this one; the job's environment "
                        "does not change it)")
    p.add_argument("--run-dir", default=None,
                   help="run directory the script uses (default: $SLURM_SUBMIT_DIR/runs/NAME-$SLURM_JOB_ID; the job's "
                        "environment does not change it)")
    p.add_argument("-o", "--output", type=output_path("-o/--output"),
                   help="write the script to this file instead of stdout")

    def run(args: argparse.Namespace) -> int:
        cfg = resolve_config(args)
        opts = cluster_options(args)
        prepared = prepare_for(cfg.name, cfg, opts, clusters.SLURM, args.flag_refit_method is not None)
        text = render_sbatch(prepared.spec, prepared.plan, args.python or sys.executable, args.run_dir, command_line())
        if args.output:
            try:
                args.output.write_text(text)
                args.output.chmod(0o755)
            except OSError as e:
                raise ConfigError(f"cannot write {args.output}: {e.strerror or e}") from None
        else:
            sys.stdout.write(text)
        return 0

    return run


COMMANDS = (_render,)
