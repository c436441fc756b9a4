"""Activation normalisation (Glow section 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijection, DataInit


class ActNorm(Bijection, DataInit):
    """Affine map with data-initialised parameters: z = (x + b) ⊙ exp(s).

    Per channel (Glow, `features=C`, parameters `[1, C, 1, 1]`) or per element (Flow++,
    `features=(C, H, W)`). `init_from` sets b and s so that the initial batch has zero mean and
    unit variance per parameter. log|det| = Σ s times the number of positions sharing each s.

    Shapes: x, z `[B, C, H, W]`; logdet `[B]`.
    """

    def __init__(self, features: int | tuple[int, int, int], eps: float = 1e-6) -> None:
        super().__init__()
        shape = (1, features, 1, 1) if isinstance(features, int) else (1, *features)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def _logdet(self, x: Tensor) -> Tensor:
        """Σ s times the positions sharing each parameter, for each example."""
        shared = x.shape[1:].numel() // self.log_scale.numel()
        return (self.log_scale.sum() * shared).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x + self.bias) * self.log_scale.exp(), self._logdet(x)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * (-self.log_scale).exp() - self.bias, -self._logdet(z)

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if self.bias.shape[d] == 1]
        if x.numel() // self.bias.numel() < 2:
            # one value per parameter has no spread: s would be −log(eps) ≈ 13.8
            raise ValueError(
                f"ActNorm's data-dependent init needs at least 2 values per parameter, got a "
                f"batch of {x.shape[0]} for parameters of shape {list(self.bias.shape[1:])}: "
                "initialise on a larger batch"
            )
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-(std + self.eps).log())
