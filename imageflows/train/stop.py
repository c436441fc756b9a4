"""When a training run stops before `train.steps`: at its wall-clock budget (`train.minutes` of
training time, counted across resumes as steps are) or at SIGINT / SIGTERM (Ctrl-C, `kill`, a
scheduler's preemption).

Either way the step under way finishes and the run checkpoints that step, so nothing is lost
and `imageflows train --resume` continues exactly; a second signal stops at once, as without
this module. Under `torchrun` the ranks agree on the step to stop at (one `all_reduce` of a
flag per step), so no rank waits for a gradient that will not come.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from imageflows.train.distributed import DistEnv, all_reduce

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def out_of_time(minutes: float, elapsed: float) -> bool:
    """Whether `elapsed` seconds of training spend a `train.minutes` budget (0: no budget)."""
    return 0 < minutes and elapsed >= 60.0 * minutes


class EarlyStop:
    """A context that turns the stop signals into a request seen at the next step boundary.

    `check(elapsed)` between steps gives the reason to stop (`"signal"`, `"minutes"`) or None.
    Handlers are installed only in the main thread (Python delivers signals nowhere else)
    and the previous ones are restored on exit.
    """

    def __init__(self, minutes: float, env: DistEnv) -> None:
        self.minutes = minutes
        self.env = env
        self.signalled = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> EarlyStop:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:  # None: a handler not set from Python, i.e. the default
                self._previous[sig] = signal.signal(sig, self._request) or signal.SIG_DFL
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True
        signal.signal(signum, self._previous[signum])  # a second signal acts at once

    def check(self, elapsed: float) -> str | None:
        """Why to stop at `elapsed` seconds of the run's training, agreed by all ranks:
        "signal", "minutes" or None."""
        signalled, spent = all_reduce(
            [float(self.signalled), float(out_of_time(self.minutes, elapsed))], self.env, op="max"
        )
        if signalled:
            return "signal"
        return "minutes" if spent else None
