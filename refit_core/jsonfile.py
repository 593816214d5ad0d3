"""Reading the JSON files of a run directory: the one place where a damaged file becomes a RunDirError.

Every record that crosses a file (run.json, job-state.json, sweep.json, results.json, a rank's
record) has a frozen dataclass with a `from_json(data, path)` built on `Fields`: it checks each
field's type as it reads it, so a file holding random bytes, `[1, 2]`, `{}` or `{"state": 5}` is
one line naming the file and the field, never a KeyError or an AttributeError three modules later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from refit_core.errors import RunDirError

DAMAGED = "the run directory is damaged: move it out of the runs directory (or delete it)"
_MISSING = object()
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list", type(None): "null"}


def read_json(path: Path, fix: str = DAMAGED) -> Any:
    """The file's JSON value; unreadable, not UTF-8 or not JSON is a RunDirError (missing: FileNotFoundError)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise RunDirError(path, "is not valid JSON (not UTF-8 text)", fix) from None
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write, then rename: a reader sees the old file or the new one, never half of one."""
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write, then rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # e.g. SIGTERM mid-write: the old file stays whole, no half-written temporary is left
        tmp.unlink(missing_ok=True)
        raise
