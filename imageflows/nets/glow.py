"""Glow's coupling conditioner (Glow section 3.3 and openai/glow `f`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import ActNorm


class ActNormNet(nn.Module):
    """`ActNorm` used inside a network, where only its output matters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(x)[0]


class ZeroConv2d(nn.Module):
    """Zero-initialised convolution with a learned output scale: (W ⋆ x + b) · exp(3·s).

    Glow section 3.3: starting the last layer of each conditioner at zero makes every coupling
    start as the identity (or a constant scale), which helps train very deep flows.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        # the factor 3 (openai/glow's logscale_factor) lets the scale move faster than Adam's step
        return self.conv(x) * (3 * self.log_scale).exp()


class GlowConditioner(nn.Module):
    """3x3 conv → actnorm → ReLU → 1x1 conv → actnorm → ReLU → zero-initialised 3x3 conv.

    Shapes: `[B, C_in (+ C_cond), H, W]` → `[B, C_out, H, W]`; a `cond` tensor with the same
    spatial size is concatenated to the input.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            ActNormNet(hidden_channels),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
            ActNormNet(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x if cond is None else torch.cat([x, cond], dim=1)
        # channels-last activations: oneDNN's convolutions (CPU) and cuDNN's tensor-core
        # kernels run NHWC natively; on 2 CPU threads this alone makes training ~1.4x faster
        return self.net(x.contiguous(memory_format=torch.channels_last))
