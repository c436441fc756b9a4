"""Argument helpers shared by the command groups: common options and list-valued types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Outcome = tuple[dict[str, Any], str]  # (JSON result, human-readable message)
Handler = Callable[[argparse.Namespace], Outcome]
# Adds subcommand `name` running `handler`, described by `summary`; returns its parser.
Command = Callable[[str, Handler, str], argparse.ArgumentParser]


def add_set(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE`, repeatable, into `args.set` (a list)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-3 (repeatable)",
    )


def add_run_data(parser: argparse.ArgumentParser) -> None:
    """The run, the data split and the weights of the latent-space commands."""
    parser.add_argument("run", metavar="RUN", help="run directory")
    parser.add_argument("--data", help="dataset name (default: the run's)")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--split", default="test", help="data split (default test)")
    add_raw(parser)


def add_raw(parser: argparse.ArgumentParser) -> None:
    """`--raw`: the raw weights of the newest checkpoint instead of the EMA."""
    parser.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `add_run_data`'s options, for the library functions."""
    return {"data": args.data, "data_dir": args.data_dir, "split": args.split, "ema": not args.raw}


def given(args: argparse.Namespace, *options: str) -> list[str]:
    """The options among `options` (e.g. "--data-dir") that the command line gave a value."""
    return [
        option
        for option in options
        if getattr(args, option.lstrip("-").replace("-", "_")) not in (None, [])
    ]


def _list_of(kind: type, what: str) -> Callable[[str], list]:
    """An argument type reading comma-separated values of `kind` (`what`, for the error)."""

    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",")]  # an empty item is an error too
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


ints = _list_of(int, "integers")  # "1,2,3" as [1, 2, 3]
floats = _list_of(float, "numbers")  # "0,0.5,1" as [0.0, 0.5, 1.0]


def pairs(text: str) -> list[tuple[int, int]]:
    """`"3:17,5:8"` as `[(3, 17), (5, 8)]`."""
    try:
        found = [tuple(int(i) for i in item.split(":")) for item in text.split(",")]
    except ValueError:
        found = []
    if not found or any(len(pair) != 2 for pair in found):
        raise argparse.ArgumentTypeError(f"expected pairs of image indices A:B,C:D, got {text!r}")
    return found
