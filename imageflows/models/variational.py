"""Variational dequantization q(u|x) as a conditional flow (Flow++ section 3.2)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ..layers import (
    CheckerboardSplit,
    Inverse,
    Logit,
    MixtureCDF,
    Sequential,
    initialize,
    standard_normal_log_prob,
)
from ..nets import ContextNet, FlowppConditioner
from .steps import flowpp_step


class VariationalDequantizer(nn.Module):
    """u ~ q(u|x): eps ~ N(0, I) through mixture couplings conditioned on x, then a sigmoid.

    The official Flow++ CIFAR-10 dequantizer: a context network (3x3 conv to `context_channels`
    and 3 gated convolutions on the checkerboard halves of x/N − ½, stacked on channels) feeds
    every gated convolution of `couplings` checkerboard Flow++ steps with `blocks` blocks each.
    log q(u|x) = log N(eps) − log|det ∂u/∂eps|. Call signature as `UniformDequantizer`.
    Shapes: x uint8 `[B, C, H, W]` (W even) → y = (x + u)/N float `[B, C, H, W]`, log q `[B]`.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        hidden_channels: int = 96,
        blocks: int = 2,
        components: int = 32,
        heads: int = 4,
        attention: bool = True,
        dropout: float = 0.0,
        couplings: int = 4,
        context_channels: int = 32,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        if w % 2:
            raise ValueError(f"variational dequantization needs an even image width, got {w}")
        self.split = CheckerboardSplit()
        self.context = ContextNet(2 * c, context_channels, dropout=dropout)
        conditioner = partial(
            FlowppConditioner,
            hidden_channels=hidden_channels,
            blocks=blocks,
            heads=heads,
            attention=attention,
            dropout=dropout,
            cond_channels=context_channels,
        )
        steps = [
            layer
            for _ in range(couplings)
            for layer in flowpp_step(
                (c, h, w), "cb", MixtureCDF(components), "conv1x1", conditioner
            )
        ]
        self.flow = Sequential([*steps, Inverse(Logit(0.0))])  # the sigmoid ends in (0, 1)

    def _context_input(self, x: Tensor, num_levels: int, dtype: torch.dtype) -> Tensor:
        halves = self.split(x.to(dtype) / num_levels - 0.5)
        return torch.cat(halves, dim=1)  # (B, 2C, H, W/2)

    def context_features(self, x: Tensor, num_levels: int, dtype: torch.dtype) -> Tensor:
        """Context of x for every coupling: `[B, C, H, W]` → `[B, context_channels, H, W/2]`."""
        return self.context(self._context_input(x, num_levels, dtype))

    def forward(
        self, x: Tensor, num_levels: int, dtype: torch.dtype, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        context = self.context_features(x, num_levels, dtype)
        eps = torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
        u, logdet = self.flow(eps, context)
        x = x.to(u.dtype)
        # far in the sigmoid's tails u, or x + u, rounds onto an edge of x's bin; the nearest
        # interior floats keep y inside it (the density there is the same to the dtype's
        # resolution), so u = N·y − x lies strictly in (0, 1)
        inf = torch.tensor(float("inf"), dtype=u.dtype, device=u.device)
        lo, hi = torch.nextafter(x / num_levels, inf), torch.nextafter((x + 1) / num_levels, -inf)
        y = ((x + u) / num_levels).clamp(lo, hi)
        return y, standard_normal_log_prob(eps) - logdet

    @torch.no_grad()
    def initialize(
        self, x: Tensor, num_levels: int, dtype: torch.dtype, generator: torch.Generator | None
    ) -> None:
        """Data-dependent init of the context network, then of the flow on eps ~ N(0, I)."""
        features = self._context_input(x, num_levels, dtype)
        initialize(self.context, features)
        context = self.context(features)
        eps = torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
        initialize(self.flow, eps, context)
