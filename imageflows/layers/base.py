"""The invertible-layer protocol (DESIGN section 2) and its two combinators.

A `Bijection` maps data to latent in `forward` and back in `inverse`; each returns the output and
`logdet = log|det ∂out/∂in|` for the direction called, a `[B]` tensor. Every layer takes an
optional `cond` tensor, ignored by unconditional layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn


class Recomputed(NamedTuple):
    """A layer's input rebuilt from its output, and the layer re-run on it under autograd."""

    x: Tensor  # the input f⁻¹(z), detached
    handle: Tensor  # requires grad; ∂(z, logdet)/∂handle = ∂(z, logdet)/∂x
    z: Tensor  # f(x), recomputed under autograd
    logdet: Tensor  # log|det ∂z/∂x|, recomputed under autograd


class Bijection(nn.Module):
    """Base class of invertible layers: `forward` is data → latent, `inverse` latent → data."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def recompute(self, z: Tensor, cond: Tensor | None = None) -> Recomputed:
        """Rebuild the input from the output z and re-run the layer on it, for back-propagation
        through the inverse (`Reversible`). Here: x = f⁻¹(z), then f(x) from x as a leaf.

        The inverse runs on a copy of the random state, so that the forward sees the state the
        original forward saw (dropout masks). A layer may override this with a cheaper
        reconstruction (a coupling needs one conditioner pass, RevNet-style).
        """
        devices = [z.device] if z.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices, device_type=z.device.type):
            x = self.inverse(z, cond)[0]
        x.requires_grad_(True)
        return Recomputed(x.detach(), x, *self(x, cond))


def zero_logdet(x: Tensor) -> Tensor:
    """A `[B]` zero log-det for volume-preserving layers."""
    return x.new_zeros(x.shape[0])


class Sequential(Bijection):
    """Composition f_n ∘ ... ∘ f_1; log-dets add (chain rule)."""

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _compose(self.layers, x, cond)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # a list: `reversed` on a ModuleList looks each layer up by its index as a string
        return _compose([layer.inverse for layer in reversed(list(self.layers))], z, cond)


def _compose(
    maps: Iterable[Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]],
    x: Tensor,
    cond: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Apply `maps` in order, summing their log-dets (starting from the first one's, not from
    zeros: one addition and one allocation fewer per chain, the same sum)."""
    logdet = None
    for f in maps:
        x, ld = f(x, cond)
        logdet = ld if logdet is None else logdet + ld
    return x, zero_logdet(x) if logdet is None else logdet


class Inverse(Bijection):
    """The inverse of a layer: swaps its `forward` and `inverse` (e.g. unsqueeze)."""

    def __init__(self, layer: Bijection) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.layer.inverse(x, cond)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.layer(z, cond)


class DataInit(nn.Module):
    """Mixin for modules with data-dependent initialisation (Glow section 3.1).

    Subclasses implement `init_from(x)`, which sets parameters from the module's input batch.
    """

    def init_from(self, x: Tensor) -> None:
        raise NotImplementedError


@torch.no_grad()
def initialize(module: nn.Module, batch: Tensor, cond: Tensor | None = None) -> None:
    """Data-dependent init: run `batch` (the module's float input) forward once.

    Every `DataInit` submodule initialises itself from the input it sees on the way, so each
    layer is initialised on the statistics of already-initialised layers below it.
    """
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: mod.init_from(args[0]))
        for m in module.modules()
        if isinstance(m, DataInit)
    ]
    try:
        module(batch, cond) if isinstance(module, Bijection) else module(batch)
    finally:
        for hook in hooks:
            hook.remove()
