"""The learning-rate schedule: linear warm-up, then piecewise constant.

Glow (§5, openai/glow's `train.py`) and Flow++ (`flows/flow_training.py`) warm the Adam
learning rate up linearly from 0 over `train.warmup_steps` and then hold it. Long runs gain from
lowering it late (README, "Lowering the learning rate pays"): `train.lr_milestones` and
`train.lr_values` are that step decay, a pure function of the step, so a resumed run follows it
exactly.
"""

from __future__ import annotations

import bisect

from imageflows.config import TrainConfig


def scheduled_lr(tc: TrainConfig, step: int) -> float:
    """The learning rate of step `step` = t (counted from 0):
    `lr_t = min(1, (t + 1) / warmup_steps) · v_t`, where `v_t = lr_values[i]` for the last
    milestone `lr_milestones[i] ≤ t`, and `v_t = lr` before the first.
    """
    ramp = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else 1.0
    passed = bisect.bisect_right(tc.lr_milestones, step)
    return ramp * (tc.lr_values[passed - 1] if passed else tc.lr)
