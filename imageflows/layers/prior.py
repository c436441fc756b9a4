"""Glow's learned top prior and the factor-out combinator of the multi-scale architecture."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijection
from .coupling import ChannelSplit
from .elementwise import Standardize


class LearnedPrior(Bijection):
    """Learned per-channel Gaussian prior written as a bijection: eps = (z − μ) · exp(−log σ).

    Glow's `learntop` (openai/glow): μ and log σ start at zero, so the prior starts as N(0, I).
    Shapes: z, eps `[B, C, H, W]`; logdet `[B]`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.zeros(1, Standardize.num_params, channels, 1, 1))
        self.standardize = Standardize()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eps, logdet = self.standardize(x, self.params)
        return eps, logdet.expand_as(x).flatten(1).sum(1)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.standardize.inverse(z, self.params)
        return x, logdet.expand_as(z).flatten(1).sum(1)


class FactorOut(Bijection):
    """Apply `inner` to the kept half of the channels and leave the factored-out half alone.

    (z1, eps2) → (inner(z1), eps2) (RealNVP section 3.6). With a split prior before it, the
    factored-out half is already standardised, so every level's latents end up in one tensor.
    """

    def __init__(self, inner: Bijection) -> None:
        super().__init__()
        self.inner = inner
        self.split = ChannelSplit()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, out = self.split(x)
        kept, logdet = self.inner(kept, cond)
        return self.split.merge(kept, out), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, out = self.split(z)
        kept, logdet = self.inner.inverse(kept, cond)
        return self.split.merge(kept, out), logdet
