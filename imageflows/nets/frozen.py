"""Plain convolutions standing in for parameterised ones in inference copies (`freeze`)."""

from __future__ import annotations

from torch import Tensor, nn


class FrozenConv2d(nn.Conv2d):
    """`nn.Conv2d` called as the layers it replaces are: a `cond` argument is ignored (the
    split prior's `ZeroConv2d` is a coupling's conditioner in a class-conditional flow)."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return super().forward(x)


def frozen_conv(kernel: Tensor, bias: Tensor, padding: tuple[int, ...]) -> nn.Conv2d:
    """A plain convolution with the given kernel and bias, for inference (`freeze`)."""
    out_channels, in_channels, size, _ = kernel.shape
    conv = FrozenConv2d(in_channels, out_channels, size, padding=padding, device=kernel.device)
    conv.weight.data, conv.bias.data = kernel.detach().clone(), bias.detach().clone()
    return conv.requires_grad_(False)
