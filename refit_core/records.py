"""Each rank's record as a plain file: JSON lines, appended (one writer, one checked reader).

A rank's record is `ranks/rank-NNNNN.jsonl`, one JSON object a line (docs/reliability.md,
"Rank records"):

    {"kind": "header", "format": 2, "rank": 0, "role": "?", "phase": "starting Python", ...}
    {"kind": "update", "fields": {"phase": "process-group init (gloo)", "phase_since": 1764423000.52, "phases": [...]}}
    {"kind": "update", "fields": {"host": "node1", "device": "cpu", "transport": {...}, ...}}
    {"kind": "iteration", "iteration": -1, "warmup": true, "time_ms": 1.9, "bytes_in": 0, ...}
    {"kind": "iteration", "iteration": 0, "warmup": false, "time_ms": 1.7, ...}
    {"kind": "update", "fields": {"verified": true, "complete": true}}

The header is written whole (temporary file, rename: a restarted attempt replaces the last one's
file); every later line is appended with one write, so writing iteration k costs the same at k = 10
as at k = 100,000, and a job killed after k iterations still has k. A last line without its newline
(the process died in the write) is not read. The record is the header, the updates applied in
order, and the iterations in order (`read_rank_file`); readers keep a file offset per rank file and
parse only what is new (`RankFileReader`). Records of the earlier format (`rank-NNNNN.json`, the
whole record rewritten each iteration) are still read.

In memory the record is a `RankRecord` (its iterations `IterationRecord`s): jobs/refit_job.py makes
it, the engine fills it in, `RankRecordWriter.save` appends it, `read_rank_file` reads it back, checked.

Phases: `phase` (what the rank is doing now), `phase_since` (wall-clock seconds since the epoch)
and `phases` (every phase entered, `[name, since]`, in order, the first "starting Python" at the
process's start) are written by `enter_phase`, which the rank's watchdog calls when it arms a phase.

Their aggregate, results.json, is refit_core/results.py.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refit_core.errors import RunDirError
from refit_core.jsonfile import NOFOLLOW, Fields, open_regular, read_json, write_file

FIRST_PHASE = "starting Python"  # the phase a rank's header says: from the process's start to its first record

__all__ = ["rank_path", "IterationRecord", "RankRecord", "RankRecordWriter", "RankFileReader",
           "read_rank_records", "read_rank_file", "load_rank_record"]

RECORD_FORMAT = 2
_RECORD_SUFFIX = ".jsonl"
_RANK_FIX = "move it out of ranks/ to see the other ranks"


def rank_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "ranks" / f"rank-{rank:05d}{_RECORD_SUFFIX}"


# ----------------------------------------------------------------------------- the record

@dataclass
class IterationRecord:
    """One iteration of one rank, as its `iteration` line says it (`warmup` iterations are numbered -W .. -1)."""

    iteration: int
    warmup: bool
    time_ms: float
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_local: int = 0
    phases_ms: dict[str, float] = field(default_factory=dict)
    launches: int = 0
    verified: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, it: Any, path: Path | str, where: str) -> "IterationRecord":
        f = Fields(it, path, where, _RANK_FIX)
        return cls(f.get("iteration", int), f.get("warmup", bool), f.get("time_ms", float),
                   f.get("bytes_in", int, default=0), f.get("bytes_out", int, default=0),
                   f.get("bytes_local", int, default=0), f.get("phases_ms", dict, default={}),
                   f.get("launches", int, default=0), f.get("verified", bool, default=True))


# Fields written only once known (None: not on record yet, and not written).
_OPTIONAL = ("host", "device", "method", "source_bytes", "destination_bytes", "extra_bytes", "transport",
             "extra_bytes_measured", "traceback")
_PHASE_FIELDS = ("phase", "phase_since", "phases")  # written by RankRecordWriter.enter_phase, not by the record


@dataclass
class RankRecord:
    """One rank's record: built once per rank (jobs/refit_job.py), filled in by the engine, saved through
    `RankRecordWriter`, read back (checked) by `read_rank_file`; every reader (aggregate, live view,
    failures, CSVs) uses these attributes.

    Mutable: the rank updates it in place as it goes (role once known, then what the transport set up,
    an iteration at a time, the verdict); each `RankRecordWriter.save` appends what changed."""

    rank: int
    role: str = "?"
    iterations: list[IterationRecord] = field(default_factory=list)
    verified: bool = False
    complete: bool = False
    error: str | None = None
    restarts: int = 0  # times SLURM requeued the job before this attempt
    host: str | None = None
    device: str | None = None  # "cpu" or the GPU's name
    method: str | None = None
    source_bytes: int | None = None  # this rank's shard bytes, as a source / as a destination
    destination_bytes: int | None = None
    extra_bytes: int | None = None  # device memory the transport allocated beyond the shards
    transport: dict[str, Any] | None = None  # what the transport says about itself (transports/base.py `info`)
    extra_bytes_measured: int | None = None  # ... and what it measured (nvshmem)
    traceback: str | None = None
    phase: str | None = None  # what the rank is doing now ("Phases" above); read only: the writer records them
    phase_since: float | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The record's fields as its lines write them, iterations and phases left out (the writer's
        business), an optional field only once it is known."""
        out: dict[str, Any] = {"rank": self.rank, "role": self.role, "verified": self.verified,
                               "complete": self.complete, "error": self.error, "restarts": self.restarts}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: Any, path: Path | str,
                  iterations: list[IterationRecord] | None = None) -> "RankRecord":
        """Check a folded record (the `.json` format's whole object, or the header with its updates);
        `iterations` given: already checked line by line (else read from the object's `iterations`)."""
        f = Fields(data, path, fix=_RANK_FIX)
        if iterations is None:
            iterations = [IterationRecord.from_json(it, path, f" (iteration {n})")
                          for n, it in enumerate(f.list_of("iterations", dict, default=[]))]
        phase, since = f.data.get("phase"), f.data.get("phase_since")
        phases = f.data.get("phases")
        return cls(f.get("rank", int), f.get("role", str, default="?"), iterations,
                   f.get("verified", bool, default=False), f.get("complete", bool, default=False),
                   f.get("error", str, type(None), default=None), f.get("restarts", int, default=0),
                   f.get("host", str, type(None), default=None), f.get("device", str, type(None), default=None),
                   f.get("method", str, type(None), default=None),
                   f.get("source_bytes", int, type(None), default=None),
                   f.get("destination_bytes", int, type(None), default=None),
                   f.get("extra_bytes", int, default=None), f.get("transport", dict, default=None),
                   f.get("extra_bytes_measured", int, default=None),
                   f.get("traceback", str, type(None), default=None),
                   # phases are what a rank was doing: shown, never relied on, so a strange one is left out
                   phase if isinstance(phase, str) else None,
                   float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None,
                   [(p[0], p[1]) for p in phases if isinstance(p, list) and len(p) == 2]
                   if isinstance(phases, list) else [])


# ----------------------------------------------------------------------------- writing a rank's record

class RankRecordWriter:
    """Keeps one rank's record file current: `save(record)` appends what changed since the last save.

    Only iterations beyond those already written, and fields whose value changed, are appended, so a
    save costs the same whatever the iteration count. Thread-safe (the engine's watchdog records its
    phases and errors from its timer thread: `enter_phase`, `add_error`).
    """

    def __init__(self, path: Path, started: float | None = None) -> None:
        """`started`: when the process started (refit_core/execution/watchdog.py process_start_time): the
        header then says the rank is "starting Python" since then; None records no phases until `enter_phase`."""
        self.path = path
        self._phases: list[list[Any]] = [] if started is None else [[FIRST_PHASE, round(started, 3)]]
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._started = False
        self._written = 0  # iterations on disk
        self._fields: dict[str, Any] = {}  # every other field, as on disk

    def save(self, record: RankRecord) -> None:
        """Append the record's new iterations and its changed fields (the first save writes the header)."""
        self._save(record.fields(), record.iterations)

    def _save(self, fields: dict[str, Any], its: list[IterationRecord]) -> None:
        with self._lock:
            if not self._started:
                self._start(fields)
                changed: dict[str, Any] = {}
            else:
                if self._fd is None:  # saved again after close(): append, never start over
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | NOFOLLOW)
                changed = {k: v for k, v in fields.items() if k not in self._fields or self._fields[k] != v}
            lines = [json.dumps({"kind": "iteration", **i.to_json()}) for i in its[self._written:]]
            if changed:
                lines.append(json.dumps({"kind": "update", "fields": changed}))
            if lines:
                _write_all(self._fd, ("\n".join(lines) + "\n").encode())
            self._fields.update(copy.deepcopy(changed))
            self._written = max(self._written, len(its))

    def phase_fields(self) -> dict[str, Any]:
        """The record's phase fields now ({} before any phase)."""
        if not self._phases:
            return {}
        name, since = self._phases[-1]
        return {"phase": name, "phase_since": since, "phases": copy.deepcopy(self._phases)}

    def enter_phase(self, phase: str, now: float | None = None) -> None:
        """Record that the rank entered `phase` (at `now`, wall clock): one appended line, none when the
        phase is the one on record already."""
        with self._lock:
            if self._phases and self._phases[-1][0] == phase:
                return
            self._phases.append([phase, round(time.time() if now is None else now, 3)])
        self._save(self.phase_fields(), [])

    def add_error(self, error: str, traceback: str | None = None) -> None:
        """Record `error` (and its traceback) unless an error is on record already: the first cause wins."""
        with self._lock:
            has = bool(self._fields.get("error"))
        if not has:
            self._save({"error": error, **({"traceback": traceback} if traceback else {})}, [])

    def _start(self, fields: dict[str, Any]) -> None:
        """The header, written whole (a new file: a restarted attempt replaces the last one's record)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fields = {**fields, **self.phase_fields()}
            tmp.unlink(missing_ok=True)
            write_file(tmp, json.dumps({"kind": "header", "format": RECORD_FORMAT, **fields}) + "\n", exclusive=True)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.path.with_suffix(".json").unlink(missing_ok=True)  # an earlier format's record of this rank
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | NOFOLLOW)
        self._fields = copy.deepcopy(fields)
        self._started = True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ----------------------------------------------------------------------------- reading rank records

class RankFileReader:
    """One rank file, read incrementally: each `read()` parses only the bytes added since the last one.

    A file replaced (a restarted attempt: new inode) or shorter than what was read is read again
    from the start. A damaged line makes the file's `problem`; it stays until the file is replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset(None)

    def _reset(self, ino: int | None) -> None:
        self._ino, self._offset = ino, 0
        self._fields: dict[str, Any] | None = None
        self._iterations: list[IterationRecord] = []
        self._line = 0
        self.problem: str | None = None

    def read(self) -> RankRecord | None:
        """The record as far as it is written; None with `problem` set when the file is damaged."""
        try:
            with os.fdopen(open_regular(self.path), "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self._ino or st.st_size < self._offset:
                    self._reset(st.st_ino)
                if self.problem is None and st.st_size > self._offset:
                    fh.seek(self._offset)
                    chunk = fh.read(st.st_size - self._offset)
                    end = chunk.rfind(b"\n") + 1  # a last line without its newline is still being written
                    self._parse(chunk[:end])
                    self._offset += end
        except OSError as e:
            self.problem = f"unreadable ({e.strerror or e.__class__.__name__})"
        if self.problem is not None:
            return None
        if self._fields is None:
            self.problem = "empty (no header line)"
            return None
        try:
            return RankRecord.from_json(self._fields, self.path.name, self._iterations)
        except RunDirError as e:
            self.problem = f"not a rank record ({e.problem})"
            return None

    def _parse(self, data: bytes) -> None:
        for raw in data.splitlines():
            self._line += 1
            where = f" (line {self._line})"
            try:
                obj = json.loads(raw.decode("utf-8"))
                f = Fields(obj, self.path.name, where, _RANK_FIX)
                kind = f.get("kind", str)
                if self._fields is None:
                    if kind != "header":
                        raise RunDirError(self.path.name, f"line 1 is not a header (kind {kind!r})")
                    self._fields = {k: v for k, v in obj.items() if k not in ("kind", "format", "iterations")}
                elif kind == "iteration":
                    self._iterations.append(IterationRecord.from_json(obj, self.path.name, where))
                elif kind == "update":
                    upd = f.get("fields", dict)
                    self._fields.update({k: v for k, v in upd.items() if k != "iterations"})
                else:
                    raise RunDirError(self.path.name, f"line {self._line} has an unknown kind {kind!r}")
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                self.problem = f"unreadable ({e.__class__.__name__} at line {self._line}: truncated or corrupt)"
                return
            except RunDirError as e:
                self.problem = f"not a rank record ({e.problem})"
                return


_READERS: dict[str, RankFileReader] = {}  # one per rank file this process has read: the live view polls


def read_rank_file(path: Path) -> tuple[RankRecord | None, str | None]:
    """(record, None) or (None, what is wrong with the file); `.jsonl` incrementally, `.json` (old format) whole."""
    if path.suffix == ".json":
        try:
            return RankRecord.from_json(read_json(path, _RANK_FIX), path.name), None
        except RunDirError as e:
            if e.problem.startswith(("is not valid JSON", "cannot be read")):
                return None, f"unreadable ({e.problem}: truncated or corrupt)"
            return None, f"not a rank record ({e.problem})"
        except OSError as e:
            return None, f"unreadable ({e.strerror or e})"
    key = str(path.absolute())
    reader = _READERS.get(key)
    if reader is None:
        reader = _READERS[key] = RankFileReader(path)
    rec = reader.read()
    return rec, reader.problem


def rank_files(run_dir: Path) -> list[Path]:
    """The rank files of a run, one per rank (the current format wins over an earlier one's leftover)."""
    found: dict[str, Path] = {}
    for p in sorted((run_dir / "ranks").glob("rank-*.json*")):
        if p.suffix in (".json", _RECORD_SUFFIX) and (p.stem not in found or p.suffix == _RECORD_SUFFIX):
            found[p.stem] = p
    return [found[k] for k in sorted(found)]


def read_rank_records(run_dir: Path) -> tuple[list[RankRecord], list[str]]:
    """All readable rank records (checked), and a note per damaged file."""
    records, problems = [], []
    for p in rank_files(run_dir):
        rec, problem = read_rank_file(p)
        if rec is None:
            problems.append(f"{p.name}: {problem}")
        else:
            records.append(rec)
    return records, problems


def load_rank_record(path: Path) -> RankRecord:
    """One rank file's record; a damaged file is a RunDirError."""
    rec, problem = read_rank_file(path)
    if rec is None:
        raise RunDirError(path, f"is damaged: {problem}", _RANK_FIX)
    return rec
