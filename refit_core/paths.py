"""The files of a run directory, named in one place (as submitit's JobPaths names a job's files).

Written before submission by the orchestrator (orchestrator/state/rundir.py): CONFIG_FILE (the RunConfig),
PLAN_FILE (the plan the ranks load: refit_core/planning/planfile.py), DEVICES_FILE (each rank's GPU, decided at
launch: refit_core/planning/devices.py), PLAN_SUMMARY_FILE (what `plan` shows), LAYOUT_FILE, RUN_FILE (the run's spec and job). Written by the job: RANKS_DIR (one record per rank),
LOGS_DIR, PROCS_DIR, RESULTS_FILE; by a local controller: STATE_FILE; by `cancel`: CANCEL_FILE.
"""

from __future__ import annotations

CONFIG_FILE = "config.json"
PLAN_FILE = "plan.bin"
DEVICES_FILE = "devices.json"
PLAN_SUMMARY_FILE = "plan.json"
LAYOUT_FILE = "layout.txt"
RUN_FILE = "run.json"
STATE_FILE = "job-state.json"
CANCEL_FILE = "cancel-requested"
RESULTS_FILE = "results.json"
RANKS_DIR = "ranks"
LOGS_DIR = "logs"
PROCS_DIR = "procs"
