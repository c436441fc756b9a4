"""Likelihood in the units papers report."""

from __future__ import annotations

import math

from torch import Tensor


def bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """bits/dim = −log p(x) / (D · ln 2), with log p(x) in nats (DESIGN section 1)."""
    return -log_prob / (num_dims * math.log(2))
