"""Fixed channel permutations (RealNVP's reverse, Glow's shuffle baseline, Glow section 3.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Bijection, zero_logdet


class ChannelPermutation(Bijection):
    """z = x[:, π]; volume preserving (log|det| = 0). Shapes: `[B, C, H, W]`."""

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], zero_logdet(x)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inverse_perm], zero_logdet(z)


class Reverse(ChannelPermutation):
    """Reverse the channel order."""

    def __init__(self, channels: int) -> None:
        super().__init__(torch.arange(channels - 1, -1, -1))


class Shuffle(ChannelPermutation):
    """A fixed random channel permutation, drawn at construction."""

    def __init__(self, channels: int) -> None:
        super().__init__(torch.randperm(channels))
