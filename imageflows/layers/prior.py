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
    With `cond_features` K > 0 it is openai/glow's `ycond` prior (Glow section 5): a
    zero-initialised linear map of the class embedding `cond` `[B, K]` (one-hot y) is added,
    (μ, log σ) = learntop + W · cond, per channel.
    Shapes: z, eps `[B, C, H, W]`; cond `[B, K]`; logdet `[B]`.
    """

    def __init__(self, channels: int, cond_features: int = 0) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.zeros(1, Standardize.num_params, channels, 1, 1))
        self.cond_proj = nn.Linear(cond_features, self.params.numel()) if cond_features else None
        if self.cond_proj is not None:
            nn.init.zeros_(self.cond_proj.weight)
            nn.init.zeros_(self.cond_proj.bias)
        self.standardize = Standardize()

    def prior_params(self, cond: Tensor | None) -> Tensor:
        """(μ, log σ) `[1|B, 2, C, 1, 1]`: learntop, plus W · cond if class-conditional."""
        if self.cond_proj is None:
            return self.params
        if cond is None:
            raise ValueError("this prior is class-conditional: pass cond, the class embedding")
        return self.params + self.cond_proj(cond).view(-1, *self.params.shape[1:])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eps, logdet = self.standardize(x, self.prior_params(cond))
        return eps, logdet.expand_as(x).flatten(1).sum(1)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.standardize.inverse(z, self.prior_params(cond))
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
