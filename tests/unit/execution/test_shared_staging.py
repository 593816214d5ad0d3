"""The shared-memory staging's files (refit_core/execution/transports/shared.py): what a user relies on is that
no /dev/shm file outlives the ranks that made it, and that the chunks land where the receivers read them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from refit_core.execution.transports import shared
from refit_core.planning.blocks import Chunk, Block

pytestmark = pytest.mark.skipif(not shared.SHM_DIR.is_dir(), reason="needs /dev/shm")


def test_a_file_of_a_process_that_is_gone_is_removed_and_a_live_ones_stays() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = shared.SHM_DIR / f"{shared.PREFIX}{dead}-test"
    live = shared.SHM_DIR / f"{shared.PREFIX}{os.getpid()}-test"
    for f in (stale, live):
        f.write_bytes(b"x")
    try:
        gone = shared.remove_stale()
        assert stale in gone and not stale.exists()
        assert live.exists() and live not in gone
    finally:
        for f in (stale, live):
            f.unlink(missing_ok=True)


def test_chunks_are_laid_out_one_after_another_aligned() -> None:
    b = Block(0, 10, 0, 10, 1, 10)
    chunks = (Chunk(3, 10, (b,)), Chunk(5, 700, (b,)), Chunk(6, 1, (b,)))
    where = shared.lay_out(chunks)
    assert [w[0] for w in where] == [3, 5, 6] and [w[2] for w in where] == [10, 700, 1]
    assert where[0][1] == 0 and where[1][1] == where[0][1] + shared.aligned(10)
    assert where[2][1] == where[1][1] + shared.aligned(700)


def test_a_mapping_sees_the_creators_bytes() -> None:
    path = str(shared.SHM_DIR / f"{shared.PREFIX}{os.getpid()}-map")
    try:
        mine, _ = shared.map_file(path, 1 << 16, create=True, populate=1 << 15)
        mine[100:104] = 7
        theirs, _ = shared.map_file(path, 1 << 16, create=False, populate=1 << 15)
        assert theirs[100:104].tolist() == [7, 7, 7, 7] and theirs.numel() == 1 << 16
        with pytest.raises(FileExistsError):
            shared.map_file(path, 1 << 16, create=True)
    finally:
        os.unlink(path)
