"""The logit bijection in front of Flow++'s flow (RealNVP section 4.1, Flow++ official code)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from .base import Bijection


class Logit(Bijection):
    """z = logit(α + (1 − 2α)·y): maps y ∈ (0, 1) to R; α = 0.05 as Flow++'s `ImgProc` does.

    The margin α keeps z finite at the edges of the data cube. Per element
    log|dz/dy| = ln(1 − 2α) − ln p − ln(1 − p) with p = α + (1 − 2α)·y, so the log-det includes
    D·ln 0.9 for α = 0.05. With α = 0, `Inverse(Logit(0.0))` is the sigmoid.
    Shapes: y, z `[B, ...]`; logdet `[B]`.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit margin alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha
        self.log_range = math.log1p(-2 * alpha)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = p.log(), (-p).log1p()
        return log_p - log_1mp, (self.log_range - log_p - log_1mp).flatten(1).sum(1)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (z.sigmoid() - self.alpha) / (1 - 2 * self.alpha)
        # log σ(z) + log σ(−z) stays finite where σ(z) rounds to 0 or 1
        logdet = F.logsigmoid(z) + F.logsigmoid(-z) - self.log_range
        return x, logdet.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
