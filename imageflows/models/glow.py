"""Glow (Kingma & Dhariwal 2018): the multi-scale flow of K steps by L levels."""

from __future__ import annotations

from functools import partial

from ..layers import Sequential, Shift
from .base import FlowModel, resolve_levels
from .dequantize import make_dequantizer
from .multiscale import MultiScaleFlow
from .steps import glow_step


class Glow(FlowModel):
    """Glow: y − ½, then L levels of K steps (actnorm, permutation, coupling), learned priors.

    The defaults are the paper's CIFAR-10 model (L=3, K=32, 512 channels, affine coupling,
    LU-decomposed 1x1 convolutions, 8 bits). H and W must be divisible by 2^L. With
    `memory_saving`, each level's K steps back-propagate through their inverse (`Reversible`),
    so training activation memory does not grow with K. Flow++'s components mix in by name:
    `coupling="mixture"` (with `components` logistics) and `dequantization="variational"`
    (a dequantizer of `dequant_couplings` couplings of `dequant_blocks` blocks each).
    `min_scale` > 0 puts a floor under the affine coupling's scale (`Affine`).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        levels: int = 3,
        depth: int = 32,
        hidden_channels: int = 512,
        coupling: str = "affine",
        permutation: str = "conv1x1_lu",
        dequantization: str = "uniform",
        n_bits: int | None = None,
        num_levels: int | None = None,
        memory_saving: bool = False,
        components: int = 32,
        min_scale: float = 0.1,
        dequant_couplings: int = 4,
        dequant_blocks: int = 2,
        dequant_context_channels: int = 32,
    ) -> None:
        c, h, w = image_shape
        if levels < 1 or depth < 1 or hidden_channels < 1:
            raise ValueError("levels, depth and hidden_channels must be positive")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"Glow with {levels} levels needs height and width divisible by {2**levels}, "
                f"got {h}x{w}"
            )
        step = partial(
            glow_step,
            hidden_channels=hidden_channels,
            coupling=coupling,
            permutation=permutation,
            components=components,
            min_scale=min_scale,
        )
        flow = Sequential([Shift(-0.5), MultiScaleFlow(c, levels, depth, step, memory_saving)])
        dequantizer = make_dequantizer(
            dequantization,
            tuple(image_shape),
            components=components,
            couplings=dequant_couplings,
            blocks=dequant_blocks,
            context_channels=dequant_context_channels,
        )
        super().__init__(image_shape, resolve_levels(n_bits, num_levels), flow, dequantizer)
        self.levels, self.depth, self.hidden_channels = levels, depth, hidden_channels
