"""The multi-scale architecture (RealNVP section 3.6, Glow section 3 and Figure 2b)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..layers import (
    Bijection,
    Coupling,
    FactorOut,
    Inverse,
    LearnedPrior,
    Reversible,
    Sequential,
    Squeeze,
    Standardize,
)
from ..nets import ZeroConv2d


class MultiScaleFlow(Sequential):
    """squeeze → K steps → [split prior, MultiScaleFlow on the kept half | top prior] → unsqueeze.

    Level ℓ squeezes `[B, C, H, W]` to `[B, 4C, H/2, W/2]` and runs K steps; below the top, it
    factors out half of the channels, standardised by the split prior
    eps2 = (z2 − μ(z1)) / σ(z1) (openai/glow `split2d`), and recurses on the kept half z1; the
    top level ends with a learned prior (`learntop`). Unsqueezing at the end keeps every level's
    output in its input's shape, so eps holds all latents in the image's shape (DESIGN §1).

    Args:
        channels: C of the input.
        levels: L, the number of squeezes.
        depth: K, steps per level.
        step: `step(channels)` builds the layers of one step at that channel count.
        memory_saving: each level's steps back-propagate through their inverse (`Reversible`).
        cond_features: K > 0 makes the top prior class-conditional on a `cond` `[B, K]`
            (openai/glow `ycond`, `LearnedPrior`).
    """

    def __init__(
        self,
        channels: int,
        levels: int,
        depth: int,
        step: Callable[[int], list[Bijection]],
        memory_saving: bool = False,
        cond_features: int = 0,
    ) -> None:
        c = 4 * channels  # (B, 4C, H/2, W/2) after the squeeze
        chain = Reversible if memory_saving else Sequential
        steps = chain(layer for _ in range(depth) for layer in step(c))
        if levels == 1:
            head: list[Bijection] = [LearnedPrior(c, cond_features)]
        else:
            # the split prior is an affine coupling whose conditioner is one zero-initialised
            # convolution of the kept half
            split_prior = Coupling(ZeroConv2d(c // 2, 2 * (c - c // 2)), Standardize())
            inner = MultiScaleFlow(c // 2, levels - 1, depth, step, memory_saving, cond_features)
            head = [split_prior, FactorOut(inner)]
        super().__init__([Squeeze(), steps, *head, Inverse(Squeeze())])


def top_latent(eps: Tensor, levels: int) -> Tensor:
    """The top level's part of the latents eps of an L-level `MultiScaleFlow`, in its shape.

    Each level's output is unsqueeze(merge(inner output, factored-out half)), so squeezing and
    keeping the first ⌊C/2⌋ channels L − 1 times, then squeezing once more, reads it back.
    Shapes: `[B, C, H, W]` → `[B, 2^(L+1)·C, H/2^L, W/2^L]`.
    """
    squeeze = Squeeze()
    for _ in range(levels - 1):
        eps = squeeze(eps)[0]
        eps = eps[:, : eps.shape[1] // 2]  # (B, 2C, H/2, W/2): the kept half
    return squeeze(eps)[0]
