"""How long one rank-record write takes at iteration k: appended JSON lines (now) against rewriting the
whole record (the format before issue 15).

    python benchmarks/record_write.py [DIR]     # prints a table; docs/reliability.md has the numbers

A record of k iterations is built (each iteration as the engine records it: about 300 bytes), then the
saves of iterations k+1 .. k+21 are timed one by one (median). The old way is timed the way it wrote: the whole
record as indented JSON into a temporary file, then a rename.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refit_core.records import RankRecordWriter  # noqa: E402

from refit_core.records import IterationRecord, RankFileReader, RankRecord

REPEAT = 5


def iteration(k: int) -> IterationRecord:
    return IterationRecord(k, False, 1.2345678901 + k * 1e-6, bytes_in=1234567, bytes_out=2345678, bytes_local=0,
                           launches=48, verified=True,
                           phases_ms={"pack": 0.123456789, "transfer": 1.0123456789, "unpack": 0.0987654321})


def _record(k: int) -> RankRecord:
    return RankRecord(0, "source", [iteration(i) for i in range(k)], host="node1", device="cpu", method="gloo")


def time_saves(directory: Path, k: int, saves: int = 21) -> float:
    """Seconds for one save at iteration k (appended JSON lines): the median of `saves` consecutive saves
    (iterations k+1 .. k+saves) after the k earlier iterations were written."""
    path = directory / f"rank-{k}.jsonl"
    rec = _record(0)
    w = RankRecordWriter(path)
    w.save(rec)
    rec.iterations = _record(k).iterations
    w.save(rec)  # the k earlier iterations, written at once
    times = []
    for j in range(saves):
        rec.iterations.append(iteration(k + j))
        t = time.perf_counter()
        w.save(rec)
        times.append(time.perf_counter() - t)
    w.close()
    path.unlink()
    return statistics.median(times)


def time_rewrites(directory: Path, k: int) -> float:
    """Seconds for the same save the old way: the whole record rewritten (temporary file, rename)."""
    rec = _record(k + 1)
    data = {**rec.fields(), "iterations": [i.to_json() for i in rec.iterations]}  # the old format's whole record
    path, tmp = directory / "rank.json", directory / ".rank.json.tmp"
    times = []
    for _ in range(max(1, REPEAT if k < 10_000 else 2)):
        t = time.perf_counter()
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        times.append(time.perf_counter() - t)
    size = path.stat().st_size
    path.unlink()
    time_rewrites.last_size = size  # type: ignore[attr-defined]
    return statistics.median(times)


def time_reads(directory: Path, k: int) -> tuple[float, float]:
    """(seconds for a poll that reads one new line, seconds for a first read of all k): the live view's cost."""
    path = directory / f"read-{k}.jsonl"
    rec = _record(0)
    w = RankRecordWriter(path)
    w.save(rec)
    rec.iterations = _record(k).iterations
    w.save(rec)
    t = time.perf_counter()
    reader = RankFileReader(path)
    reader.read()
    first = time.perf_counter() - t
    polls = []
    for j in range(11):
        rec.iterations.append(iteration(k + j))
        w.save(rec)
        t = time.perf_counter()
        reader.read()
        polls.append(time.perf_counter() - t)
    w.close()
    path.unlink()
    return statistics.median(polls), first


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="record-write-"))
    directory.mkdir(parents=True, exist_ok=True)
    print("| iteration | append (now) | rewrite (before) | record size before |")
    print("| ---: | ---: | ---: | ---: |")
    for k in (10, 1_000, 100_000):
        new = time_saves(directory, k)
        old = time_rewrites(directory, k)
        print(f"| {k:,} | {new * 1e6:,.0f} us | {old * 1e3:,.1f} ms | "
              f"{time_rewrites.last_size / 1e6:,.1f} MB |")  # type: ignore[attr-defined]
    print()
    print("| iterations in the file | a poll (one new line) | a first read (all of it) |")
    print("| ---: | ---: | ---: |")
    for k in (10, 100_000):
        poll, first = time_reads(directory, k)
        print(f"| {k:,} | {poll * 1e6:,.0f} us | {first * 1e3:,.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
