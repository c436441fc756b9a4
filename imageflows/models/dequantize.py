"""Dequantization: from discrete levels x to continuous y = (x + u) / N (DESIGN section 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class UniformDequantizer(nn.Module):
    """u ~ U[0, 1)^D, so log q(u|x) = 0 (RealNVP section 4.1, Glow's baseline).

    Shapes: x uint8 `[B, C, H, W]` → y float `[B, C, H, W]`, log q `[B]`.
    """

    def forward(
        self, x: Tensor, num_levels: int, dtype: torch.dtype, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
        return (x.to(dtype) + u) / num_levels, x.new_zeros(x.shape[0], dtype=dtype)
