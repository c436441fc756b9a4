"""Dequantization: from discrete levels x to continuous y = (x + u) / N (DESIGN section 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .steps import choose
from .variational import VariationalDequantizer


class UniformDequantizer(nn.Module):
    """u ~ U[0, 1)^D, so log q(u|x) = 0 (RealNVP section 4.1, Glow's baseline).

    Shapes: x uint8 `[B, C, H, W]` → y float `[B, C, H, W]`, log q `[B]`.
    """

    def forward(
        self, x: Tensor, num_levels: int, dtype: torch.dtype, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
        return (x.to(dtype) + u) / num_levels, x.new_zeros(x.shape[0], dtype=dtype)


DEQUANTIZERS: dict[str, type[nn.Module]] = {
    "uniform": UniformDequantizer,
    "variational": VariationalDequantizer,
}


def make_dequantizer(
    dequantization: str, image_shape: tuple[int, int, int], **variational: object
) -> nn.Module:
    """q(u|x) by name; `variational` are `VariationalDequantizer`'s keyword arguments, ignored
    by the uniform dequantizer."""
    kind = choose("dequantization", dequantization, DEQUANTIZERS)
    return kind() if kind is UniformDequantizer else kind(image_shape, **variational)
