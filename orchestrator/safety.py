"""The one way a user's string reaches a destination: a name, a script, a path, the console, an error line.

Every string a user gives (flags, config files, the environment, run directories) passes one of these
functions on its way out, chosen by where it goes:

- a name (run name `--name`, config names, `--job-name`): `name()`, letters, digits and `._+-`, starting
  with a letter or digit, at most `NAME_MAX` characters. Names become directory names, SLURM job
  names and script text, so they hold nothing any of those would read specially.
- a value in a script line (`#SBATCH --partition=...`, `--env` values, `--srun-arg`): `script_text()`
  refuses control characters (a newline ends a `#SBATCH` directive or a comment, and the next line
  runs); `shell_word()` also `shlex.quote`s it for a shell command; `comment_text()` makes any text
  one comment line (control characters shown escaped).
- a path (`--runs-dir`, `render -o`, `--run-dir`, `--config-file`): `path_text()`, `output_file()`,
  `directory()`, `read_text()` check it before use and say in one line what is wrong.
- the console: refitctl's consoles do not read markup at all (`console()`), so no user text can be
  taken for it; the few styled lines are built with `styled()`, which escapes every value.
- the error line: `one_line()` escapes control characters, so `refitctl: error: ...` is one line.

Values are checked as given, never after stripping: a value that would be changed by stripping is
refused, so the checked value is the written value.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import unicodedata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from refit_core.errors import ConfigError

NAME_MAX = 64
NAME_CHARS = "letters, digits and . _ + -"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
TEXT_MAX = 500  # free text (use case, description, scheduler values)
PATH_MAX = 1024
PART_MAX = 255  # bytes of one file name (Linux NAME_MAX)
CONFIG_FILE_MAX = 1 << 20  # a config file larger than 1 MiB is not a config file


def _control(text: str, file_name_bytes: bool = False) -> str | None:
    """The first control (or other non-printing: Cc, Cf, Cs, Co, Cn) character of `text`, or None.

    `file_name_bytes`: a path's bytes that the locale cannot decode (LANG=C and a non-ASCII folder name)
    arrive as the surrogates U+DC80..U+DCFF (PEP 383); they are a file name's bytes, not control
    characters, and the file system takes them back unchanged."""
    return next((c for c in text if unicodedata.category(c).startswith("C")
                 and not (file_name_bytes and "\udc80" <= c <= "\udcff")), None)


def _show(text: str, limit: int = 40) -> str:
    """`text` quoted and shortened for an error message (control characters escaped by repr)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def name(what: str, text: object) -> str:
    """`text` if it is a valid name (see the module docstring); else a one-line ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be text, got {text!r}")
    if not _NAME.fullmatch(text) or len(text) > NAME_MAX:
        raise ConfigError(f"{what} {_show(text)} is not a valid name: use 1 to {NAME_MAX} {NAME_CHARS}, "
                          "starting with a letter or digit")
    return text


def script_text(what: str, text: object, *, spaces: bool = True, limit: int = TEXT_MAX) -> str:
    """`text` if a script line can hold it: no control characters (no newline, NUL, tab), no spaces if
    `spaces` is False, at most `limit` characters. Returned unchanged."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be text, got {text!r}")
    bad = _control(text)
    if bad is not None:
        raise ConfigError(f"{what} {_show(text)} contains the control character {bad!r}: remove it")
    if not spaces and any(c.isspace() for c in text):
        raise ConfigError(f"{what} {_show(text)} contains a space: remove it")
    if len(text) > limit:
        raise ConfigError(f"{what} is {len(text)} characters long: give at most {limit}")
    return text


def shell_word(what: str, text: object, limit: int = PATH_MAX) -> str:
    """`text` checked by `script_text` and quoted for a shell command line (one word, nothing expanded)."""
    return shlex.quote(script_text(what, text, limit=limit))


def comment_text(text: str) -> str:
    """`text` as one line of a comment: control characters written as escapes (\\n, \\x00)."""
    return "".join(c if not unicodedata.category(c).startswith("C") else repr(c)[1:-1] for c in text)


one_line = comment_text  # an error message: the same rule, one line whatever it quotes


def path_text(what: str, path: object) -> Path:
    """A path from the user: text without control characters, not empty, at most PATH_MAX characters."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{what} must be a path, got {text!r}")
    bad = _control(text, file_name_bytes=True)
    if bad is not None:
        raise ConfigError(f"{what} {_show(text)} contains the control character {bad!r}: remove it")
    if len(text) > PATH_MAX:
        raise ConfigError(f"{what} is {len(text)} characters long: give at most {PATH_MAX}")
    long = next((part for part in text.split("/") if len(part.encode("utf-8", "surrogatepass")) > PART_MAX), None)
    if long is not None:
        raise ConfigError(f"{what}: the path part {_show(long)} is longer than {PART_MAX} bytes, "
                          "more than a file system allows")
    return Path(text)


def output_file(what: str, path: object, parents: bool = False) -> Path:
    """A file refitctl is about to write: not a folder itself, and its folder exists (`parents`: or can be
    made, i.e. the nearest part of it that exists is a folder)."""
    p = path_text(what, path)
    parent = p.parent
    if parents:
        directory(what, parent)
    elif not parent.exists():
        raise ConfigError(f"{what} {p}: the folder {parent} does not exist: create it first")
    elif not parent.is_dir():
        raise ConfigError(f"{what} {p}: {parent} is not a folder")
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder: give a file name")
    return p


def directory(what: str, path: object) -> Path:
    """A folder refitctl may create: it is a folder already, or the nearest part that exists is one."""
    p = path_text(what, path)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{what} {p}: {part} is a file, not a folder: choose another path")
            break
    return p


def read_text(what: str, path: object, limit: int = CONFIG_FILE_MAX) -> str:
    """The text of a small UTF-8 file (a config file): never more than `limit` bytes are read, and a
    folder, a device (/dev/zero), a binary or an unreadable file is a one-line ConfigError."""
    p = path_text(what, path)
    try:
        with open(p, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{what} {p} is not a regular file: give a TOML file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} not found: check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a folder: give a TOML file") from None
    except OSError as e:
        raise ConfigError(f"{what} {p} cannot be read ({e.strerror or e.__class__.__name__})") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {p} is larger than {limit >> 20} MiB: that is not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not UTF-8 text (a binary file?): give a TOML file") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {p} holds NUL bytes (a binary file?): give a TOML file")
    return text


def console(width: int = 120) -> Console:
    """A console that reads no markup and no emoji codes in what it prints (tables included), at least
    `width` columns wide so tables stay readable when piped. Style comes from `styled()` or `style=`."""
    c = Console(markup=False, emoji=False)
    return c if c.width >= width else Console(markup=False, emoji=False, width=width)


def styled(template: str, **values: Any) -> Text:
    """Rich text from a markup `template` written in the code, with each `{value}` escaped: the template's
    markup styles, the user's text never does. `styled("[bold]{run}[/] started", run=path)`."""
    return Text.from_markup(template.format(**{k: escape(str(v)) for k, v in values.items()}), emoji=False)
