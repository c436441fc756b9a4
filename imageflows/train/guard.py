"""The guard against non-finite training steps (DESIGN section 7).

`train_step` skips the update of a step whose loss or gradient is not finite on some rank.
After `train.max_bad_steps` such steps in a row the run goes back to its last good checkpoint
(step 0 if none) with the learning rate times `train.lr_backoff`; after `MAX_RELOADS_IN_A_ROW`
reloads with no checkpoint written in between, it gives up with a `FloatingPointError`.
"""

from __future__ import annotations

import warnings

# Reloads of the last checkpoint, each at a lower learning rate, before the guard gives up.
MAX_RELOADS_IN_A_ROW = 5


class NonFiniteGuard:
    """Counts non-finite steps and reloads in a row, and says when to reload."""

    def __init__(self, max_bad_steps: int, warn: bool = True) -> None:
        self.max_bad_steps, self.warn = max_bad_steps, warn
        self.bad_in_a_row = self.reloads_in_a_row = 0

    def must_reload(self, step: int, finite: bool) -> bool:
        """Count step `step` (warning if it was skipped); True once the run must reload."""
        if finite:
            self.bad_in_a_row = 0
            return False
        self.bad_in_a_row += 1
        if self.warn:
            warnings.warn(
                f"step {step}: non-finite bits/dim or gradient norm; update skipped "
                f"({self.bad_in_a_row} in a row, reload at {self.max_bad_steps})",
                RuntimeWarning,
                stacklevel=3,
            )
        return self.bad_in_a_row >= self.max_bad_steps

    def reload(self, step: int, checkpoint_step: int | None, lr: float) -> None:
        """Count a reload at step `step`, or raise if reloads no longer help."""
        if self.reloads_in_a_row >= MAX_RELOADS_IN_A_ROW:
            raise FloatingPointError(
                f"step {step}: training still gives non-finite values after "
                f"{self.reloads_in_a_row} reloads of checkpoint step {checkpoint_step or 0} "
                f"at learning rates down to {lr:g}; lower train.lr or check the data"
            )
        self.bad_in_a_row = 0
        self.reloads_in_a_row += 1

    def checkpointed(self) -> None:
        """A checkpoint was written: it is the good state that reloads go back to."""
        self.reloads_in_a_row = 0
