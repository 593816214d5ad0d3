"""The records of a run directory that refitctl writes and reads: run.json, job-state.json, sweep.json.

One reader each (`RunInfo.from_json`, `JobStateFile.from_json`, `SweepInfo.from_json`): every field
is checked for its type where it is read, so a damaged file (random bytes, `[1, 2]`, `{}`, a field of
the wrong type) is one `RunDirError` naming the file and the field. `runs` shows such a run as
BROKEN; every other command says the one line and exits 2. Readers keep the file's whole object
(`raw`): the fields of a newer refitctl survive a rewrite by an older one.

Shared files are changed under a lock (`locked()`: fcntl.flock on a lock file beside them) with
the read, the change and the write inside it (`update_run_file`, `update_sweep_file`), so two
refitctl processes (two `sweep --resume`, a controller and a submitting refitctl) lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from refit_core.errors import RunDirError
from refit_core.jsonfile import NOFOLLOW, Fields, read_json, write_json_atomic
from refit_core.paths import RUN_FILE, STATE_FILE

SWEEP_FILE = "sweep.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class JobRecord:
    """run.json's `job`: which scheduler has the run, under which id (executor.JobRef.to_json)."""

    cluster: str
    job_id: str
    folder: str
    submitted: float
    controller_pid: int | None

    @classmethod
    def from_fields(cls, f: Fields) -> "JobRecord":
        return cls(f.get("cluster", str), f.get("job_id", str), f.get("folder", str, default=""),
                   f.get("submitted", float, default=0.0), f.get("controller_pid", int, type(None), default=None))


@dataclass(frozen=True)
class FinalState:
    """run.json's `final`: the job's end state, recorded by the controller or the submitting refitctl."""

    state: str
    detail: str
    source: str

    @classmethod
    def from_fields(cls, f: Fields) -> "FinalState":
        return cls(f.get("state", str), f.get("detail", str, default=""), f.get("source", str, default=""))


@dataclass(frozen=True)
class ParallelDims:
    """run.json's `source` / `destination`: the layout's parallel sizes."""

    tp: int
    ep: int
    pp: int

    @classmethod
    def from_fields(cls, f: Fields) -> "ParallelDims":
        return cls(f.get("tp", int, default=1), f.get("ep", int, default=1), f.get("pp", int, default=1))


@dataclass(frozen=True)
class RunInfo:
    """run.json: what was submitted (rundir.run_info writes it), the job, the final state once recorded.

    Every reader uses these attributes; `raw` (the whole object) only goes back into run.json."""

    name: str
    config: str
    world_size: int
    active_ranks: int
    delivered_bytes: int
    precision: str  # the destination's: bf16 (also when run.json predates FP8) or fp8
    wire_bytes: int | None  # bytes that cross between GPUs per iteration, in that precision (None: not recorded)
    iterations: int
    warmup: int
    mode: str  # "" when run.json has none
    method: str  # the spec's refit method ("?" when it has none)
    requested_method: str | None  # what the user asked for (a GPU method run with gloo on CPU: its name)
    source: ParallelDims
    destination: ParallelDims
    job: JobRecord | None
    final: FinalState | None
    run_dir: str
    created: str
    command: str
    sweep: str  # the sweep directory it belongs to, "" if none
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "RunInfo":
        f = Fields(data, path)
        spec = Fields(f.get("spec", dict), path, " in 'spec'")
        method = spec.get("method", str, default="?")
        requested = spec.get("requested_method", str, type(None), default=None)
        source, destination = (ParallelDims.from_fields(Fields(f.get(key, dict), path, f" in {key!r}"))
                               for key in ("source", "destination"))
        world, active = f.get("world_size", int), f.get("active_ranks", int)
        if not 0 < active <= world:
            raise RunDirError(path, f"says {active} active ranks of a world of {world}", "the run directory is damaged")
        job, final = f.sub("job", default=None), f.sub("final", default=None)
        return cls(f.get("name", str), f.get("config", str), world, active, f.get("delivered_bytes", int),
                   f.get("precision", str, default="bf16"), f.get("wire_bytes", int, type(None), default=None),
                   f.get("iterations", int), f.get("warmup", int), f.get("mode", str, default=""), method, requested,
                   source, destination,
                   JobRecord.from_fields(job) if job else None, FinalState.from_fields(final) if final else None,
                   f.get("run_dir", str, default=""), f.get("created", str, default=""),
                   f.get("command", str, default=""), f.get("sweep", str, default=""), data)


def read_run_info(run_dir: Path) -> RunInfo:
    path = run_dir / RUN_FILE
    try:
        return RunInfo.from_json(read_json(path), path)
    except FileNotFoundError:
        raise RunDirError(run_dir, f"is not a run directory (no {RUN_FILE})",
                          "`refitctl runs` lists the runs") from None


@dataclass(frozen=True)
class JobStateFile:
    """job-state.json: the local controller's RUNNING, then COMPLETED / FAILED / TIMEOUT / CANCELLED."""

    state: str
    detail: str
    exit_codes: list[int | None]
    failed_ranks: list[int]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "JobStateFile":
        f = Fields(data, path)
        for key in ("started", "ended"):
            f.get(key, float, default=0.0)
        f.get("controller_pid", int, type(None), default=None)
        f.get("job_id", str, int, default="")
        return cls(f.get("state", str), f.get("detail", str, default=""),
                   f.list_of("exit_codes", int, type(None), default=[]), f.list_of("failed_ranks", int, default=[]),
                   data)


def read_job_state(run_dir: Path) -> JobStateFile | None:
    """The controller's state file; None when there is none yet."""
    path = run_dir / STATE_FILE
    try:
        return JobStateFile.from_json(read_json(path), path)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class SweepInfo:
    """sweep.json: the configs, the stored options, each config's run directories (retries last), the job ids."""

    name: str
    configs: list[str]
    cluster: str
    options: dict[str, Any]
    runs: dict[str, list[str]]
    jobs: list[str]
    created: str
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "SweepInfo":
        f = Fields(data, path)
        f.get("command", str, default="")
        f.list_of("resumed", str, default=[])
        runs_f = Fields(f.get("runs", dict), path, " in 'runs'")
        runs = {name: runs_f.list_of(name, str) for name in runs_f.data}
        for dirs in runs.values():
            for d in dirs:
                if not d or "/" in d or d in (".", ".."):
                    raise RunDirError(path, f"names a run directory {d!r} outside the sweep",
                                      "the sweep directory is damaged")
        return cls(f.get("name", str), f.list_of("configs", str), f.get("cluster", str, default="local"),
                   f.get("options", dict, default={}), runs, f.list_of("jobs", str, default=[]),
                   f.get("created", str, default=""), data)


def read_sweep_info(sweep_dir: Path) -> SweepInfo:
    path = sweep_dir / SWEEP_FILE
    try:
        return SweepInfo.from_json(read_json(path), path)
    except FileNotFoundError:
        raise RunDirError(sweep_dir, f"is not a sweep directory (no {SWEEP_FILE})",
                          "`refitctl runs` lists the sweeps") from None


# ----------------------------------------------------------------------------- changing shared files

@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold `directory/.lock` exclusively (fcntl.flock; released when the block ends or the process dies)."""
    path = directory / LOCK_FILE
    try:
        fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | NOFOLLOW | os.O_NONBLOCK, 0o644), "a")
    except OSError as e:
        raise RunDirError(path, f"cannot be created ({e.strerror or e})", "check the directory's permissions") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update_run_file(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> RunInfo:
    """Read run.json, change it, write it back: all under the run's lock. Returns what was written."""
    with locked(run_dir):
        data = dict(read_run_info(run_dir).raw)
        change(data)
        info = RunInfo.from_json(data, run_dir / RUN_FILE)
        write_json_atomic(run_dir / RUN_FILE, data)
        return info


def update_sweep_file(sweep_dir: Path, change: Callable[[dict[str, Any]], None]) -> SweepInfo:
    """Read sweep.json, change it, write it back: all under the sweep's lock (callers may hold it already:
    flock is per open file, so hold it with `locked()` around several steps and use `write_sweep_file`)."""
    with locked(sweep_dir):
        return write_sweep_file(sweep_dir, change)


def write_sweep_file(sweep_dir: Path, change: Callable[[dict[str, Any]], None]) -> SweepInfo:
    """The read-modify-write of sweep.json; the caller holds `locked(sweep_dir)`."""
    data = dict(read_sweep_info(sweep_dir).raw)
    change(data)
    info = SweepInfo.from_json(data, sweep_dir / SWEEP_FILE)
    write_json_atomic(sweep_dir / SWEEP_FILE, data)
    return info
