"""The one module that talks to submitit: submitting runs (SLURM or local) and each task's entry point.

Everything else sees RunSpecs, run directories and the job references returned here.

SLURM: `submitit.SlurmExecutor` writes the sbatch script and submits it; several runs of the same
shape go as one job array. Tasks are launched by `srun --kill-on-bad-exit=1`, so one failing rank
ends the job at once.

Local: submitit's LocalExecutor, adapted where it does not fit a benchmark a user watches and
detaches from (submitit 1.5.4):
- its controller is started in a new session, so Ctrl-C in the terminal reaches refitctl only and
  the job keeps running; it leaves CUDA_VISIBLE_DEVICES as the user has it (submitit would hide
  every GPU unless told how many);
- the controller (`python -m orchestrator.submission.executor FOLDER`, a subclass of submitit's) behaves like
  srun: when a rank fails the others are stopped after a short grace; at the time limit all are
  stopped; it writes RUN_DIR/job-state.json (RUNNING, then COMPLETED / FAILED / TIMEOUT /
  CANCELLED) so any later refitctl can tell what happened, and honours RUN_DIR/cancel-requested;
- several runs submitted together form a local "array": one controller runs them one after another.

Each task runs `run_task(run_dir, env)`: it takes rank, world size and local rank from
`submitit.JobEnvironment()`, exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
itself (not TorchDistributedEnvironment: that narrows CUDA_VISIBLE_DEVICES to one GPU per rank,
which breaks several NVSHMEM PEs sharing a GPU), sends its output to RUN_DIR/logs/rank-NNNNN.log
and calls `jobs.refit_job.run(run_dir)`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import submitit
from submitit.core import utils as submitit_utils
from submitit.local.local import Controller, LocalExecutor, LocalJob

from orchestrator.state.rundir import CANCEL_FILE, STATE_FILE
from orchestrator.submission.runspec import HostMemory, RunSpec, format_time, sbatch_extras
from refit_core.errors import ConfigError, RefitError
from refit_core.jsonfile import NOFOLLOW
from refit_core.results import write_json_atomic
from refit_core.taskenv import DEFAULT_MASTER_PORT, LOCAL_RUNS, free_port, master_port, rank_log_name

KILL_GRACE_S = 5.0  # local: how long the other ranks get after one fails (srun --kill-on-bad-exit kills at once)


@dataclass(frozen=True)
class JobRef:
    """A submitted run: enough to ask about it, cancel it and find its files from any process."""

    cluster: str
    job_id: str
    folder: str  # submitit's folder
    submitted: float
    controller_pid: int | None = None  # local runs

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "job_id": self.job_id, "folder": self.folder,
                "submitted": self.submitted, "controller_pid": self.controller_pid}


# ----------------------------------------------------------------------------- where to run

def detect_cluster(requested: str) -> tuple[str, str]:
    """("slurm" | "local", why) for --cluster auto / slurm / local."""
    if requested == "local":
        return "local", "--cluster local"
    has_sbatch = shutil.which("sbatch") is not None
    if requested == "slurm":
        if not has_sbatch:
            raise ConfigError("--cluster slurm: sbatch is not on PATH; run on a SLURM login node or use --cluster local")
        return "slurm", "--cluster slurm"
    if not has_sbatch:
        return "local", "no sbatch on PATH"
    try:
        ok = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        return "local", "sbatch is installed but SLURM does not answer (sinfo failed)"
    return "slurm", "sbatch found and SLURM answers"


def local_gpu_count() -> int:
    """CUDA GPUs this machine's torch can use (0 without an NVIDIA device: torch is not even imported)."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def host_memory() -> HostMemory:
    """This machine's available and total memory (/proc/meminfo; elsewhere the physical pages, twice)."""
    try:
        info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines() if ":" in ln)
        total = int(info["MemTotal"].split()[0]) * 1024
        return HostMemory(int(info.get("MemAvailable", info["MemTotal"]).split()[0]) * 1024, total)
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return HostMemory(total, total)


# ----------------------------------------------------------------------------- submission

def submit(specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[JobRef]:
    """Submit runs as one job or one array: on SLURM they must share one shape (cluster, resources,
    partition, account, qos); locally one controller runs them one after another, whatever their size."""
    if not specs:
        return []
    spec = specs[0]
    folder.mkdir(parents=True, exist_ok=True)
    args = [(str(d.resolve()), dict(s.env)) for s, d in zip(specs, run_dirs)]
    t = time.time()
    if spec.cluster == "local":
        ex = _LocalArrayExecutor(folder, run_dirs=[d.resolve() for d in run_dirs],
                                 tasks=[s.resources.tasks for s in specs],
                                 time_limit_s=spec.resources.time_limit_s)
        jobs = ex.submit_runs(args)
        return [JobRef("local", j.job_id, str(folder.resolve()), t, ex.controller_pid) for j in jobs]
    if len({shape(s) for s in specs}) != 1:
        raise ValueError("a SLURM array needs runs of one shape; group them with shape() first")
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**slurm_parameters(spec, len(specs)))
    try:  # submitit prints sbatch's stderr on failure; the error below says it in one line
        with submitit.helpers.clean_env(), contextlib.redirect_stderr(io.StringIO()):
            if len(args) == 1:
                jobs = [ex.submit(run_task, *args[0])]
            else:
                with ex.batch():
                    jobs = [ex.submit(run_task, *a) for a in args]
    except submitit_utils.FailedJobError as e:
        raise RefitError(f"sbatch refused the job: {_last_line(str(e))} (compare --partition, --gpus-per-node, "
                         "--nodes and --time with what `sinfo` shows)") from None
    except subprocess.CalledProcessError as e:
        raise RefitError(f"sbatch failed: {_last_line(str(e.output or e))}") from None
    return [JobRef("slurm", str(j.job_id), str(folder.resolve()), t) for j in jobs]


def withdraw(refs: Sequence[JobRef], wait_s: float = 15.0) -> str:
    """Stop jobs just submitted whose ids could not be recorded (nobody could follow or cancel them):
    the local controller by SIGTERM (it stops its ranks), SLURM jobs by scancel. Returns what was done."""
    pids = {r.controller_pid for r in refs if r.cluster == "local" and r.controller_pid}
    ids = [r.job_id for r in refs if r.cluster != "local"]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    if ids:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if not _reaped(p)}
        time.sleep(0.05)
    what = ", ".join(f"{r.cluster} job {r.job_id}" for r in refs)
    return f"{what} was stopped, nothing runs" if not pids else f"{what} was sent SIGTERM"


def _reaped(pid: int) -> bool:
    """The process has exited (reaped here when it is this process's child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        try:
            os.kill(pid, 0)
            return False
        except OSError:
            return True


def shape(spec: RunSpec) -> tuple[Any, ...]:
    """Runs with equal shapes can share one SLURM job array."""
    o = spec.options
    return (spec.cluster, spec.resources, o.partition, o.account, o.qos, o.cpus_per_task, o.exclusive,
            o.sbatch_args, o.srun_args, o.job_name)


def slurm_parameters(spec: RunSpec, array_size: int = 1) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for a run (or an array of runs of its shape)."""
    r, o = spec.resources, spec.options
    limit_min = max(1, math.ceil(r.time_limit_s / 60))  # SLURM counts time limits in minutes
    params: dict[str, Any] = {
        "job_name": o.job_name or (spec.job_name if array_size == 1 else "refit-sweep"),
        "nodes": r.nodes, "ntasks_per_node": r.tasks_per_node, "time": limit_min,
        # submitit's own pre-timeout signal: the tasks log it and carry on (see run_task)
        "signal_delay_s": min(90, max(5, r.time_limit_s // 10)),
        "stderr_to_stdout": True,
        "setup": ['if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi'],
        "srun_args": ["--kill-on-bad-exit=1", *o.srun_args],
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    for key in ("partition", "account", "qos", "cpus_per_task"):
        if getattr(o, key) is not None:
            params[key] = getattr(o, key)
    if o.exclusive:
        params["exclusive"] = True
    params["additional_parameters"] = sbatch_extras(o.sbatch_args)
    if array_size > 1:
        params["array_parallelism"] = array_size
    return params


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or ["(no output)"])[-1]


class _LocalArrayExecutor(LocalExecutor):
    """submitit's LocalExecutor with refitctl's controller (see the module docstring)."""

    def __init__(self, folder: Path, run_dirs: Sequence[Path], tasks: Sequence[int], time_limit_s: int) -> None:
        super().__init__(folder)
        self.run_dirs = list(run_dirs)
        self.tasks = list(tasks)
        self.time_limit_s = time_limit_s
        self.controller_pid: int | None = None

    def submit_runs(self, args: Sequence[tuple[str, dict[str, str]]]) -> list[LocalJob]:
        subs = [submitit_utils.DelayedSubmission(run_task, *a) for a in args]
        folder = submitit_utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for d in subs:
            p = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(self.time_limit_s / 60, self.max_num_timeout)
            d.dump(p)
            pickles.append(p)
        proc = self._start_controller()
        self.controller_pid = proc.pid
        ids = [str(proc.pid)] if len(subs) == 1 else [f"{proc.pid}_{i}" for i in range(len(subs))]
        jobs = [LocalJob(folder=self.folder, job_id=i, tasks=list(range(n)), process=proc)
                for i, n in zip(ids, self.tasks)]
        for job, p in zip(jobs, pickles):
            job.paths.move_temporary_file(p, "submitted_pickle")
        return jobs

    def _start_controller(self) -> "subprocess.Popen[bytes]":
        env = dict(os.environ)
        env.update(
            SUBMITIT_LOCAL_NTASKS=str(self.tasks[0]),
            SUBMITIT_LOCAL_COMMAND=self._submitit_command_str,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(self.time_limit_s)),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S="0",
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1",
            SUBMITIT_EXECUTOR="local",
            SUBMITIT_LOCAL_WITH_SHELL="",
            **{LOCAL_RUNS: json.dumps([[str(d), n] for d, n in zip(self.run_dirs, self.tasks)])},
        )
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        log = open(self.folder / "controller.log", "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "orchestrator.submission.executor", str(self.folder)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()


# ----------------------------------------------------------------------------- inside each task

class JobTerminated(BaseException):
    """SIGTERM reached the task: the job was cancelled or reached its time limit."""


def run_task(run_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """Entry point of every task of a refit job (pickled by submitit, run on the nodes)."""
    job = submitit.JobEnvironment()
    os.environ.update(env)
    rank, world, nodes = job.global_rank, job.num_tasks, max(1, job.num_nodes)
    _redirect_output(Path(run_dir) / "logs" / rank_log_name(rank))
    if job.cluster == "local":
        addr, port = "127.0.0.1", os.environ.get("REFITCTL_MASTER_PORT", str(DEFAULT_MASTER_PORT))
    else:
        addr, port = job.hostnames[0], str(master_port(job.raw_job_id))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(job.local_rank),
                      LOCAL_WORLD_SIZE=str(world // nodes), MASTER_ADDR=addr, MASTER_PORT=port)
    signal.signal(submitit.JobEnvironment._usr_sig(), _log_signal)
    signal.signal(signal.SIGTERM, _terminate)
    print(f"refitctl: rank {rank} of {world}, node {job.node} of {nodes} ({socket.gethostname()}), "
          f"{job.cluster} job {job.job_id}; master {addr}:{port}", flush=True)
    from jobs.refit_job import run

    record = run(run_dir)
    if not record.verified:
        raise RuntimeError(f"rank {rank} finished without verifying its destination bytes")
    atexit.register(_exit_fast, job.paths.result_pickle)
    return {"rank": rank, "verified": True}


def _exit_fast(result_pickle: Path) -> None:
    """After success (submitit's result written), skip torch's interpreter teardown: seconds per process
    on a busy machine, with nothing left to save."""
    if result_pickle.exists():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _redirect_output(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _log_signal(signum: int, frame: Any) -> None:
    # submitit would requeue or give up here; the scheduler's own time limit decides instead
    print(f"refitctl: got {signal.Signals(signum).name}: the time limit or a preemption is near", flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise JobTerminated("received SIGTERM: the job was cancelled or reached its time limit")


# ----------------------------------------------------------------------------- local controller

class _RunController(Controller):  # pragma: no cover - runs in its own process
    """submitit's local controller, one run after another, with srun-like failure handling."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.runs = [(held_dir(Path(d)), int(n)) for d, n in json.loads(os.environ[LOCAL_RUNS])]
        self.stop_all = False
        self.stop_signal = 0
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stop_all = True
        self.stop_signal = signum

    def run_all(self) -> None:
        base = self.pid
        for i, (run_dir, ntasks) in enumerate(self.runs):
            self.pid = base if len(self.runs) == 1 else f"{base}_{i}"
            self.ntasks = ntasks
            state = run_dir / STATE_FILE
            if self.stop_all or (run_dir / CANCEL_FILE).exists():
                write_state(state, {"state": "CANCELLED", "ended": time.time(), "job_id": self.pid,
                                    "detail": self._stopped_by() + " before it started"})
                continue
            os.environ["REFITCTL_MASTER_PORT"] = str(free_port())
            started = time.time()
            reserve_state(state, {"state": "RUNNING", "started": started, "job_id": self.pid,
                                  "controller_pid": os.getpid()}, ntasks)
            try:
                self.start_tasks()
                outcome, detail, codes, failed = self._wait(run_dir)
            finally:
                self.kill_tasks()
            write_state(state, {"state": outcome, "detail": detail, "exit_codes": codes, "failed_ranks": failed,
                                "started": started, "ended": time.time(), "job_id": self.pid})
            _finalize(run_dir, outcome, detail)

    def _wait(self, run_dir: Path) -> tuple[str, str, list[int | None], list[int]]:
        """(state, detail, each rank's exit code (None: still running), ranks in the order they failed)."""
        start = time.monotonic()
        failed: list[int] = []  # ranks in the order their failure was seen
        first_fail = 0.0
        while True:
            codes = [t.poll() for t in self.tasks]
            new = [k for k, c in enumerate(codes) if c not in (None, 0) and k not in failed]
            if new and not failed:
                first_fail = time.monotonic()
            failed += new
            if all(c is not None for c in codes):  # before a cancel: one that comes after the end changes nothing
                if not failed:
                    return "COMPLETED", "", codes, failed
                return "FAILED", _failure(failed, codes), codes, failed
            if self.stop_all or ((run_dir / CANCEL_FILE).exists() and not _refit_done(run_dir)):
                return "CANCELLED", self._stopped_by(), codes, failed
            if failed and time.monotonic() - first_fail > KILL_GRACE_S:
                return "FAILED", _failure(failed, codes) + "; the other ranks were stopped", codes, failed
            if time.monotonic() - start > self.timeout_s:
                return "TIMEOUT", f"time limit of {format_time(self.timeout_s)} reached", codes, failed
            time.sleep(0.1)

    def _stopped_by(self) -> str:
        """Who stopped the run, in words: `refitctl cancel` (its request file) or a signal to the controller."""
        if self.stop_signal:
            return (f"the local controller received {_signal_name(self.stop_signal)} (not `refitctl cancel`: "
                    "a shutdown, a kill or a logout?)")
        return "cancelled by the user (refitctl cancel)"

    def start_tasks(self) -> None:
        """submitit's, but each task leads its own process group, so stopping a task stops whatever it
        started too (nothing is left behind)."""
        self.folder.mkdir(exist_ok=True)
        paths = [submitit_utils.JobPaths(self.folder, self.pid, k) for k in range(self.ntasks)]
        self.stdouts = [p.stdout.open("a") for p in paths]
        self.stderrs = self.stdouts if self.stderr_to_stdout else [p.stderr.open("a") for p in paths]
        for k in range(self.ntasks):
            env = dict(os.environ, SUBMITIT_LOCAL_LOCALID=str(k), SUBMITIT_LOCAL_GLOBALID=str(k),
                       SUBMITIT_LOCAL_JOB_ID=self.pid)
            self.tasks.append(subprocess.Popen(self.command, shell=False, env=env, stderr=self.stderrs[k],
                                               stdout=self.stdouts[k], encoding="utf-8", start_new_session=True))

    def _forward_signal(self, signum: int, *args: Any) -> None:
        for task in self.tasks:
            try:
                os.killpg(task.pid, signum)  # the task and everything it started
            except OSError:
                pass

    def kill_tasks(self) -> None:
        """SIGTERM (the tasks record why they stop), then SIGKILL after a short wait: each task's whole
        process group."""
        self._forward_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while any(t.poll() is None for t in self.tasks) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._forward_signal(signal.SIGKILL)
        for t in self.tasks:
            try:
                t.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.tasks = []
        files = self.stdouts + self.stderrs
        self.stdouts, self.stderrs = [], []
        for f in files:
            f.close()


def _refit_done(run_dir: Path) -> bool:
    """Rank 0 wrote a verified results.json: the refit is over, its ranks are only exiting. A cancel that
    arrives now must not turn a verified run into CANCELLED (issue 25, item 8)."""
    from refit_core.results import read_results

    try:
        return bool(read_results(run_dir / "results.json")["verified"])
    except (OSError, RefitError, KeyError, TypeError):
        return False


def held_dir(run_dir: Path) -> Path:
    """The run directory by an open descriptor (/proc/self/fd/N): a directory moved while its run goes on is
    still the one the controller watches for a cancel and writes its state into, and the old path is never
    made again (issue 25, item 9). Where /proc is missing, or the directory is, the path itself."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return run_dir
    held = Path(f"/proc/self/fd/{fd}")
    if not held.is_dir():
        os.close(fd)
        return run_dir
    return held


STATE_RESERVE = 4096  # bytes job-state.json keeps, at least, for its final state on a full disk


def reserve_state(path: Path, data: dict[str, Any], ntasks: int) -> None:
    """The RUNNING state, written padded to the size the final state will need (exit codes and failed ranks
    of every task): the final write can then overwrite it in place when the disk is full (`write_state`)."""
    text = json.dumps(data, indent=1)
    size = max(STATE_RESERVE, len(text) + 24 * ntasks + 2048)
    write_json_atomic(path, data)
    with contextlib.suppress(OSError):
        with open(path, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            fh.write(b" " * max(0, size - fh.tell() - 1) + b"\n")  # JSON ignores the trailing spaces


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write job-state.json: atomically (write, rename) when the disk has room; on a full disk (ENOSPC,
    EDQUOT) over the bytes `reserve_state` kept, in place and padded, so the final state is recorded even
    then (issue 25, item 3). A state that does not fit them keeps its first failed ranks and exit codes."""
    try:
        write_json_atomic(path, data)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = e
    try:
        size = path.stat().st_size
        short = {**data, "exit_codes": [], "failed_ranks": data.get("failed_ranks", [])[:16],
                 "detail": str(data.get("detail", ""))[:200]}
        text = next((t for t in (json.dumps(d, separators=(",", ":")).encode() for d in (data, short))
                     if len(t) < size), None)
        if text is None:
            raise full
        fd = os.open(path, os.O_WRONLY | NOFOLLOW)
        try:
            os.pwrite(fd, text + b" " * (size - len(text) - 1) + b"\n", 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        raise full from None


def _finalize(run_dir: Path, state: str, detail: str) -> None:
    """The run is over: results.json (if rank 0 wrote none), the CSVs, the final state in run.json, written
    here so a detached run is complete without anyone reading it (reading commands never write)."""
    from orchestrator.state.rundir import finalize, now_iso
    from orchestrator.state.runfiles import read_run_info

    try:
        finalize(run_dir, read_run_info(run_dir), {"state": state, "detail": detail, "source": "local controller",
                                              "ended": now_iso()})
    except (OSError, RefitError) as e:  # a full disk or a damaged run.json: job-state.json still says it
        with contextlib.suppress(OSError):  # its log may sit on the same full disk
            print(f"refitctl controller: {run_dir}: results not finalized: {e}", flush=True)


def _failure(failed: list[int], codes: list[int | None]) -> str:
    first, code = failed[0], codes[failed[0]]
    rest = f" (then {len(failed) - 1} more)" if len(failed) > 1 else ""
    how = f"killed by signal {-code} ({_signal_name(-code)})" if code is not None and code < 0 else f"exit code {code}"
    return f"rank {first} failed first, {how}{rest}"


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


if __name__ == "__main__":  # the local controller: python -m orchestrator.submission.executor FOLDER
    _RunController(Path(sys.argv[1])).run_all()
