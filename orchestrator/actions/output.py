"""How commands write: a wide console that reads no markup in user text, stdout that tolerates `| head`, and the
command line as the run records it."""

from __future__ import annotations

import os
import shlex
import sys

from rich.console import Console

from orchestrator import safety


def wide_console() -> Console:
    """A console at least 120 columns wide, so tables stay readable when piped; it reads no markup in
    what it prints, so a user's name or path is shown as written (orchestrator/safety.py)."""
    return safety.console(120)


def command_line() -> str:
    return "refitctl " + shlex.join(sys.argv[1:])


def emit(text: str) -> None:
    """Write to stdout; a reader that stops early (`| head`) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
