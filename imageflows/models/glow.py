"""Glow (Kingma & Dhariwal 2018): the multi-scale flow of K steps by L levels."""

from __future__ import annotations

from torch import nn

from ..layers import (
    ActNorm,
    Additive,
    Affine,
    Bijection,
    Coupling,
    FactorOut,
    InvConv1x1,
    InvConv1x1LU,
    Inverse,
    LearnedPrior,
    MixtureCDF,
    Reverse,
    Reversible,
    Sequential,
    Shift,
    Shuffle,
    Squeeze,
    Standardize,
)
from ..layers.elementwise import ElementwiseMap
from ..nets import GlowConditioner, ZeroConv2d
from .base import FlowModel
from .dequantize import UniformDequantizer
from .variational import VariationalDequantizer

COUPLINGS: dict[str, type[ElementwiseMap]] = {
    "additive": Additive,
    "affine": Affine,
    "mixture": MixtureCDF,
}
PERMUTATIONS: dict[str, type[Bijection] | None] = {
    "none": None,
    "reverse": Reverse,
    "shuffle": Shuffle,
    "conv1x1": InvConv1x1,
    "conv1x1_lu": InvConv1x1LU,
}
DEQUANTIZERS = {"uniform": UniformDequantizer, "variational": VariationalDequantizer}


def _choice(name: str, value: str, options: dict) -> object:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(options)}")
    return options[value]


def make_transform(coupling: str, components: int) -> ElementwiseMap:
    """A coupling's element-wise map by name; "mixture" has `components` logistics."""
    kind = _choice("coupling", coupling, COUPLINGS)
    return kind(components) if kind is MixtureCDF else kind()


def make_dequantizer(
    dequantization: str, image_shape: tuple[int, int, int], **variational: object
) -> nn.Module:
    """q(u|x) by name; `variational` are `VariationalDequantizer`'s keyword arguments."""
    kind = _choice("dequantization", dequantization, DEQUANTIZERS)
    return kind(image_shape, **variational) if kind is VariationalDequantizer else kind()


def resolve_levels(n_bits: int | None, num_levels: int | None) -> int:
    """N from `n_bits` (N = 2^b) or `num_levels`; exactly one may be given (default 8 bits)."""
    if n_bits is not None and num_levels is not None:
        raise ValueError("give n_bits or num_levels, not both")
    if num_levels is None:
        n_bits = 8 if n_bits is None else n_bits
        if not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
        num_levels = 2**n_bits
    if not 2 <= num_levels <= 256:
        raise ValueError(f"num_levels must be in 2..256, got {num_levels}")
    return num_levels


def glow_step(
    channels: int, hidden_channels: int, coupling: str, permutation: str, components: int = 32
) -> list[Bijection]:
    """actnorm → permutation → coupling (Glow section 3, Figure 2a)."""
    transform = make_transform(coupling, components)
    permute = _choice("permutation", permutation, PERMUTATIONS)
    conditioner = GlowConditioner(
        channels // 2, transform.num_params * (channels - channels // 2), hidden_channels
    )
    return [
        ActNorm(channels),
        *([permute(channels)] if permute is not None else []),
        Coupling(conditioner, transform),
    ]


def glow_level(
    channels: int,
    levels: int,
    depth: int,
    hidden_channels: int,
    coupling: str,
    permutation: str,
    memory_saving: bool = False,
    components: int = 32,
) -> Bijection:
    """squeeze → K steps → [split prior, recurse on the kept half | top prior] → unsqueeze.

    Recursing on the kept half and unsqueezing at the end keeps every level's output in its
    input's shape, so eps holds all latents in the image's shape (DESIGN §1).
    Shapes: `[B, C, H, W]` → `[B, C, H, W]`.
    """
    c = 4 * channels  # (B, 4C, H/2, W/2) after the squeeze
    chain = Reversible if memory_saving else Sequential
    steps = chain(
        layer
        for _ in range(depth)
        for layer in glow_step(c, hidden_channels, coupling, permutation, components)
    )
    if levels == 1:
        head: list[Bijection] = [LearnedPrior(c)]
    else:
        # the split prior eps2 = (z2 − μ(z1)) / σ(z1) (openai/glow `split2d`) is an affine
        # coupling whose conditioner is one zero-initialised convolution
        split_prior = Coupling(ZeroConv2d(c // 2, 2 * (c - c // 2)), Standardize())
        inner = glow_level(
            c // 2,
            levels - 1,
            depth,
            hidden_channels,
            coupling,
            permutation,
            memory_saving,
            components,
        )
        head = [split_prior, FactorOut(inner)]
    return Sequential([Squeeze(), steps, *head, Inverse(Squeeze())])


class Glow(FlowModel):
    """Glow: L levels of K steps (actnorm, permutation, coupling) with learned priors.

    The defaults are the paper's CIFAR-10 model (L=3, K=32, 512 channels, affine coupling,
    LU-decomposed 1x1 convolutions, 8 bits). H and W must be divisible by 2^L. With
    `memory_saving`, each level's K steps back-propagate through their inverse (`Reversible`),
    so training activation memory does not grow with K. Flow++'s components mix in by name:
    `coupling="mixture"` (with `components` logistics) and `dequantization="variational"`.
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
    ) -> None:
        c, h, w = image_shape
        if levels < 1 or depth < 1 or hidden_channels < 1:
            raise ValueError("levels, depth and hidden_channels must be positive")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"Glow with {levels} levels needs height and width divisible by {2**levels}, "
                f"got {h}x{w}"
            )
        flow = Sequential(
            [
                Shift(-0.5),
                glow_level(
                    c,
                    levels,
                    depth,
                    hidden_channels,
                    coupling,
                    permutation,
                    memory_saving,
                    components,
                ),
            ]
        )
        dequantizer = make_dequantizer(dequantization, image_shape, components=components)
        super().__init__(image_shape, resolve_levels(n_bits, num_levels), flow, dequantizer)
        self.levels, self.depth, self.hidden_channels = levels, depth, hidden_channels
