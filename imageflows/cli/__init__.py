"""The `imageflows` command line: each subcommand parses its arguments, then calls one library
function. The subcommands live in command groups: `runs` (train, eval, sample), `measure`
(bench, ablate, presets) and `explore` (the latent-space tools and the report).

Human output and progress go to stderr; `--json` prints exactly one JSON object on stdout. Bad
input ends with one line `imageflows: error: ...` on stderr and exit status 2 (set
IMAGEFLOWS_TRACEBACK=1 to see the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from imageflows.allocator import keep_freed_memory

from . import explore, measure, ood, runs
from .arguments import Handler

__all__ = ["build_parser", "main"]

# Python 3.13's rule for an argument that reads as a negative number rather than an option.
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default `sys.argv[1:]`); returns the exit status.

    The process-wide settings (the allocator's tuning) are applied here, never by the library.
    """
    try:
        args = build_parser().parse_args(_attach_negative_values(argv))
    except SystemExit as done:  # --help, or a usage error already reported
        return int(done.code or 0)
    keep_freed_memory()
    try:
        result, message = args.handler(args)
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as err:
        if os.environ.get("IMAGEFLOWS_TRACEBACK"):
            raise
        print(f"imageflows: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imageflows: interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone reports
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(message, file=sys.stderr)
    # a run stopped by Ctrl-C / SIGTERM reports as usual, then exits as an interrupted command
    return 130 if isinstance(result, dict) and result.get("stopped") == "signal" else 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"imageflows: error: {self.prog.removeprefix('imageflows ')}: {message} "
                     f"(see {self.prog} --help)\n")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = _Parser(
        prog="imageflows", description="Glow and Flow++ image flows with exact likelihood."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, summary: str) -> argparse.ArgumentParser:
        subcommand = commands.add_parser(name, help=summary, description=summary)
        subcommand.set_defaults(handler=handler)
        subcommand.add_argument(
            "--json", action="store_true", help="print one JSON object on stdout"
        )
        return subcommand

    for group in (runs, measure, explore, ood):
        group.add_commands(command)
    return parser


def _attach_negative_values(argv: Sequence[str] | None) -> list[str]:
    """`--alphas -2,-1` as `--alphas=-2,-1`: before Python 3.13, argparse reads a value that
    starts with "-" and is not one plain number as an option."""
    args = list(sys.argv[1:] if argv is None else argv)
    joined: list[str] = []
    for arg in args:
        if joined and joined[-1] in explore.NEGATIVE_VALUE_OPTIONS and _NEGATIVE_NUMBER.match(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0]} [{len(lines) - 1} more lines: rerun with IMAGEFLOWS_TRACEBACK=1]"
