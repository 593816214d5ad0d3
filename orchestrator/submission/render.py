"""`refitctl render NAME > job.sbatch`: a standalone sbatch script for users who submit by hand.

The script (templates/refit.sbatch filled in) writes the resolved config, each rank's GPU and a run.json into
its run directory, makes the plan once (a one-task step, `python -m jobs.refit_job --prepare RUN_DIR`), then `srun`s the job
entry point `python -m jobs.refit_job RUN_DIR` on every task,
so `refitctl status/results/cancel RUN_DIR` follow it like a job refitctl submitted.
"""

from __future__ import annotations

import json
import shlex
import string
from pathlib import Path
from typing import Any

from orchestrator import safety
from orchestrator.submission.prepared import run_info
from orchestrator.submission.runspec import RunSpec, sbatch_extras
from refit_core.errors import ConfigError
from refit_core.planning.plan import Plan

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "refit.sbatch"


def sbatch_lines(spec: RunSpec) -> list[str]:
    r, o = spec.resources, spec.options
    lines = [f"--job-name={spec.job_name}", f"--nodes={r.nodes}", f"--ntasks-per-node={r.tasks_per_node}"]
    if r.gpus_per_node:
        lines.append(f"--gpus-per-node={r.gpus_per_node}")
    if o.cpus_per_task:
        lines.append(f"--cpus-per-task={o.cpus_per_task}")
    lines.append(f"--time={o.time}")
    for key in ("partition", "account", "qos"):
        if getattr(o, key):
            lines.append(f"--{key}={getattr(o, key)}")
    if o.exclusive:
        lines.append("--exclusive")
    for key, value in sbatch_extras(o.sbatch_args).items():
        name = key.replace("_", "-")
        lines.append(f"--{name}" if value is True else f"--{name}={value}")
    return ["#SBATCH " + ln for ln in lines]


def render_sbatch(spec: RunSpec, plan: Plan, python: str, run_dir: str | None, command: str) -> str:
    """The filled-in template (pure: the same inputs give the same script)."""
    if not TEMPLATE.is_file():
        raise ConfigError(f"template {TEMPLATE} is missing: run refitctl from its source checkout (pip install -e .)")
    cfg = spec.config
    info = run_info(spec, plan, command, "@RUN_DIR@")
    info["created"] = "@CREATED@"
    info["job"] = {"cluster": "slurm", "job_id": "@SLURM_JOB_ID@", "folder": "@RUN_DIR@", "submitted": "@SUBMITTED@",
                   "controller_pid": None}
    src, dst = cfg.layouts.source, cfg.layouts.destination
    title = (f"Refit job {cfg.name}" + (f" ({cfg.use_case})" if cfg.use_case else "") +
             f": TP={src.tp},EP={src.ep} -> TP={dst.tp},EP={dst.ep}, {cfg.layouts.mode.value}, {cfg.run.method}")
    # Every value below reaches the script through orchestrator/safety.py: comments as one line, shell
    # values quoted (names were checked when the RunSpec was made; sbatch lines hold no control characters).
    env_lines = [f"export {k}=${{{k}:-{safety.shell_word(f'environment variable {k}', v)}}}" for k, v in spec.env]
    default_dir = f'"$SLURM_SUBMIT_DIR"/runs/{shlex.quote(spec.name)}-"$SLURM_JOB_ID"'
    values: dict[str, Any] = {
        "title": safety.comment_text(title), "command": safety.comment_text(command),
        "sbatch_lines": "\n".join(sbatch_lines(spec)),
        "python": safety.shell_word("--python", python),
        "run_dir": default_dir if run_dir is None else safety.shell_word("--run-dir", str(safety.path_text("--run-dir", run_dir))),
        "config_json": json.dumps(cfg.to_json(), indent=1),
        "devices_json": json.dumps(None if spec.devices is None else spec.devices.to_json()),
        "layout": plan.world.describe(),
        "run_json": json.dumps(info, indent=1),
        "env_lines": "\n".join(env_lines),
        "nodes": spec.resources.nodes, "tasks_per_node": spec.resources.tasks_per_node,
        "srun_args": "".join(shlex.quote(a) + " " for a in spec.options.srun_args),
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)
