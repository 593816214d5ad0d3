"""`refitctl`: the command users type. Errors of the project become one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
from typing import NoReturn, Sequence

from orchestrator import safety
from orchestrator.commands import plan, render, report, run, sweep
from orchestrator.actions.args import Command
from refit_core.errors import ConfigError, RefitError

# Every subcommand, in the order --help lists them: each command module says which commands it has.
COMMANDS: tuple[Command, ...] = (*plan.COMMANDS, *run.COMMANDS, *render.COMMANDS, *sweep.COMMANDS, *report.COMMANDS)


class UsageError(ConfigError):
    """A command line argparse cannot parse (unknown option, missing value, bad choice)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is a UsageError: one line and exit code 2 like every other error, not usage text."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:  # a misspelled command or choice: the nearest one, as Python 3.12's argparse would say
            message += did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        raise UsageError(f"{message}: see `{self.prog} --help`")


def did_you_mean(given: str, known: Sequence[str]) -> str:
    """' (did you mean X?)' for the nearest of `known` to a misspelled `given`, or '' when none is near."""
    near = difflib.get_close_matches(given, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def unknown_options(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """The arguments a command does not take, each misspelled option with its nearest real one."""
    options = [s for a in parser._actions for s in a.option_strings]  # noqa: SLF001 - argparse keeps no public list
    return " ".join(x + (did_you_mean(x.split("=", 1)[0], options) if x.startswith("--") else "") for x in extra)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refitctl", description="Benchmark MoE weight refit between parallel layouts.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        # allow_abbrev=False: `--num-lay 3` is an unknown option, not a silent --num-layers 3
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, allow_abbrev=False)
        sp.set_defaults(run=cmd.build(sp), parser=sp)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (a test's StringIO)
        pass


def _tolerant_output() -> None:
    """stdout and stderr that write any text: on an ASCII-only terminal (LANG=C, PYTHONIOENCODING=ascii) a
    character it cannot show becomes an escape (\\xfc), never a UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a test's StringIO has none (and needs none)
        if reconfigure is not None and (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {unknown_options(args.parser, extra)}: "
                             f"see `refitctl {args.command} --help`")
        return args.run(args)
    except RefitError as e:
        print(f"refitctl: error: {safety.one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `refitctl plan --json | head -1`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except OSError as e:  # the last line of defence: a file system's refusal (full, read-only, ...) in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"refitctl: error: {safety.one_line(where + (e.strerror or str(e)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refitctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
