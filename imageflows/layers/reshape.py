"""Space-to-channel reshapes (RealNVP section 3.6, Glow section 3)."""

from __future__ import annotations

from torch import Tensor

from .base import Bijection, zero_logdet


class Squeeze(Bijection):
    """Fold each 2x2 spatial block into channels: `[B, C, H, W]` → `[B, 4C, H/2, W/2]`.

    A permutation of the entries, so log|det| = 0.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), zero_logdet(x)  # (B, 4C, H/2, W/2)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c4, h, w = z.shape
        x = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w), zero_logdet(z)  # (B, C, 2H, 2W)
