"""Plain convolutions standing in for parameterised ones in inference copies (`freeze`)."""

from __future__ import annotations

from torch import Tensor, nn


def frozen_conv(kernel: Tensor, bias: Tensor, padding: tuple[int, ...]) -> nn.Conv2d:
    """A plain convolution with the given kernel and bias, for inference (`freeze`)."""
    out_channels, in_channels, size, _ = kernel.shape
    conv = nn.Conv2d(in_channels, out_channels, size, padding=padding, device=kernel.device)
    conv.weight.data, conv.bias.data = kernel.detach().clone(), bias.detach().clone()
    return conv.requires_grad_(False)
