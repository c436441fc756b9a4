"""Polyak averaging of the weights: an exponential moving average used for evaluation/samples."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An exponential moving average of a model's parameters and buffers.

    After each optimizer step, `avg <- decay · avg + (1 − decay) · weights` for floating-point
    tensors; integer and boolean buffers (such as the record of initialisation) are copied, which
    `torch.optim.swa_utils.AveragedModel(use_buffers=True)` would instead average and truncate.
    The decay warms up as `min(decay, (1 + t) / (10 + t))` at step t (TensorFlow's
    `ExponentialMovingAverage(num_updates=t)`, used by the official Glow code), so early
    averages are not dominated by the initial weights. `decay = 0` makes the average equal the
    raw weights. The average is a separate model in eval
    mode with gradients off; its `state_dict` loads straight into a fresh model.

    Args:
        model: the trained model; the average starts as a copy of it.
        decay: in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the weights of `model` after optimizer step `step` (1-based) into the average."""
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged, current = [], []
        mine = [*self.model.parameters(), *self.model.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        for avg, new in zip(mine, theirs, strict=True):
            if avg.is_floating_point() and decay > 0:
                averaged.append(avg)
                current.append(new.detach())
            else:
                avg.copy_(new)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
