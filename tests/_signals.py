"""A training loop that signals itself mid-run, for the early-stop tests."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from typing import Any

from imageflows.train import loop


def signal_after_step(n: int, signum: signal.Signals) -> Callable:
    """The loop's `train_step`, sending this process `signum` as its `n`-th call returns
    (install it with `monkeypatch.setattr(loop, "train_step", ...)`)."""
    calls, real = itertools.count(1), loop.train_step

    def step(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if next(calls) == n:
            signal.raise_signal(signum)
        return result

    return step
