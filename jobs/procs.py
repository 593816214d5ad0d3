"""Each rank's process, as the run directory records it, so a run whose launcher is gone can still be stopped.

Every task writes `RUN_DIR/procs/rank-NNNNN.json` when it starts: host, pid, the kernel's start time
of that pid (`/proc/PID/stat` field 22, clock ticks since boot) and the boot id. A pid alone may
have been reused by then; pid + start time + boot id on the same host name one process for good.
`refitctl cancel` reads them when the local controller is gone (orchestrator/state/jobstate.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from refit_core.jsonfile import write_file

PROCS_DIR = "procs"


@dataclass(frozen=True)
class RankProcess:
    rank: int
    host: str
    pid: int
    start_ticks: int | None
    boot_id: str

    def is_running_here(self) -> bool:
        """The very process the rank recorded is alive on this machine (not a reused pid, not a zombie)."""
        if self.host != socket.gethostname() or self.boot_id != boot_id() or self.start_ticks is None:
            return False
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and int(stat[19]) == self.start_ticks


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment process `pid` was started with (/proc/PID/environ: readable for one's own
    processes only), or None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def record_process(run_dir: Path, rank: int) -> None:
    d = run_dir / PROCS_DIR
    d.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    data = {"rank": rank, "host": socket.gethostname(), "pid": pid, "start_ticks": start_ticks(pid),
            "boot_id": boot_id()}
    tmp = d / f".rank-{rank:05d}.json.tmp"
    tmp.unlink(missing_ok=True)
    write_file(tmp, json.dumps(data), exclusive=True)
    os.replace(tmp, d / f"rank-{rank:05d}.json")


def recorded_processes(run_dir: Path) -> list[RankProcess]:
    """The processes the ranks recorded; unreadable files are skipped (they name nothing to stop)."""
    out = []
    for f in sorted((run_dir / PROCS_DIR).glob("rank-*.json")):
        try:
            d = json.loads(f.read_text())
            out.append(RankProcess(int(d["rank"]), str(d["host"]), int(d["pid"]),
                                   None if d.get("start_ticks") is None else int(d["start_ticks"]), str(d["boot_id"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def stop_processes(procs: list[RankProcess], grace_s: float = 3.0) -> list[RankProcess]:
    """SIGTERM each process still running here (the rank records why it stops), SIGKILL after `grace_s`;
    returns those that were running."""
    running = [p for p in procs if p.is_running_here()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in running:
            if p.is_running_here():
                try:
                    os.kill(p.pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and any(p.is_running_here() for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
    return running
