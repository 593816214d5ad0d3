"""Reading the JSON files of a run directory: the one place where a damaged file becomes a RunDirError.

Every record that crosses a file (run.json, job-state.json, sweep.json, results.json, a rank's
record) has a frozen dataclass with a `from_json(data, path)` built on `Fields`: it checks each
field's type as it reads it, so a file holding random bytes, `[1, 2]`, `{}` or `{"state": 5}` is
one line naming the file and the field, never a KeyError or an AttributeError three modules later.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from refit_core.errors import RunDirError

DAMAGED = "the run directory is damaged: move it out of the runs directory (or delete it)"
_MISSING = object()
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list", type(None): "null"}


class NotRegularFile(OSError):
    """A run directory's file that is a FIFO, a socket or a device: reading it could block forever."""


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file. Opened without blocking (a FIFO's
    open waits for a writer) and checked before a byte is read, so a FIFO or a device planted in a run
    directory is an error, never a reader that hangs (issue 25, item 11). The caller closes it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file (`open_regular`); FileNotFoundError, NotRegularFile or another OSError."""
    with os.fdopen(open_regular(path), "rb") as fh:
        return fh.read()


def read_json(path: Path, fix: str = DAMAGED) -> Any:
    """The file's JSON value; unreadable, not UTF-8 or not JSON is a RunDirError (missing: FileNotFoundError)."""
    try:
        text = read_regular(path).decode("utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise RunDirError(path, "is not valid JSON (not UTF-8 text)", fix) from None
    except NotRegularFile as e:
        raise RunDirError(path, f"is {e.strerror}", "remove it: refitctl wrote no such thing") from None
    except OSError as e:
        raise RunDirError(path, f"cannot be read ({e.strerror or e})", "check its permissions") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunDirError(path, f"is not valid JSON ({e.msg} at line {e.lineno})", fix) from None
    except RecursionError:
        raise RunDirError(path, "is not valid JSON (nested too deeply)", fix) from None


def _is(value: Any, t: type) -> bool:
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


class Fields:
    """Typed reads of one JSON object's fields; any mistake is a RunDirError naming the file and the field."""

    def __init__(self, data: Any, path: Path | str, what: str = "", fix: str = DAMAGED) -> None:
        self.path, self.fix, self.what = path, fix, what
        if not isinstance(data, dict):
            raise RunDirError(path, f"is not a JSON object{what}", fix)
        self.data: dict[str, Any] = data

    def get(self, key: str, *types: type, default: Any = _MISSING) -> Any:
        """data[key], which must be one of `types` (int excludes bool; float accepts an int)."""
        if key not in self.data:
            if default is _MISSING:
                raise RunDirError(self.path, f"has no field {key!r}{self.what}", self.fix)
            return default
        value = self.data[key]
        if not any(_is(value, t) for t in types):
            want = " or ".join(_NAMES.get(t, t.__name__) for t in types)
            raise RunDirError(self.path, f"field {key!r}{self.what} is not {want}", self.fix)
        return value

    def list_of(self, key: str, *types: type, default: Any = _MISSING) -> list[Any]:
        """data[key] as a list whose every item is one of `types`."""
        items = self.get(key, list, default=default)
        for item in items:
            if not any(_is(item, t) for t in types):
                want = " or ".join(_NAMES.get(t, t.__name__) for t in types)
                raise RunDirError(self.path, f"field {key!r}{self.what} holds an item that is not {want}", self.fix)
        return list(items)

    def sub(self, key: str, default: Any = _MISSING) -> "Fields | None":
        """The object at data[key] as Fields (None when it is null or absent with default None)."""
        value = self.get(key, dict, type(None), default=default)
        return None if value is None else Fields(value, self.path, f"{self.what} in {key!r}", self.fix)


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SymlinkRefused(OSError):
    """A file refitctl writes is a symbolic link: writing would follow it out of the run directory."""


def write_file(path: Path, data: bytes | str, *, append: bool = False, exclusive: bool = False) -> None:
    """Write (or append to) `path`, never through a symbolic link planted in its place: a link there is a
    SymlinkRefused error naming it (O_NOFOLLOW), so nothing is written outside the run directory (issue 25,
    item 6). `exclusive`: the file must not exist yet (a temporary file)."""
    flags = os.O_WRONLY | os.O_CREAT | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if append else (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno == errno.EEXIST and os.path.islink(path)):
            raise SymlinkRefused(errno.ELOOP, "is a symbolic link: refitctl writes no file through one "
                                 "(remove it)", str(path)) from None
        raise
    with os.fdopen(fd, "ab" if append else "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write, then rename: a reader sees the old file or the new one, never half of one."""
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write, then rename: a reader sees the old file or the new one, never half of one. The rename replaces
    a link planted at `path` (it is not followed), and the temporary file is never written through one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if os.path.islink(tmp):
            tmp.unlink()
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:  # e.g. SIGTERM mid-write: the old file stays whole, no half-written temporary is left
        tmp.unlink(missing_ok=True)
        raise
