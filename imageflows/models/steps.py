"""The flow steps of Glow and Flow++, and the registries their switches choose from.

One module serves Glow's main flow, Flow++'s main flow and the variational dequantizer, so a
component named in a config (`coupling="mixture"`, `permutation="reverse"`) means the same layer
wherever it is used.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..layers import (
    ActNorm,
    Additive,
    Affine,
    Bijection,
    ChannelSplit,
    CheckerboardSplit,
    Coupling,
    ElementwiseMap,
    InvConv1x1,
    InvConv1x1LU,
    MixtureCDF,
    Reverse,
    Shuffle,
    SwapHalves,
)
from ..nets import GlowConditioner

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
SPLITS: dict[str, type[nn.Module]] = {"cb": CheckerboardSplit, "ch": ChannelSplit}
# where a class-conditional model feeds the class embedding: (the top prior, the couplings)
CLASS_CONDITIONINGS: dict[str, tuple[bool, bool]] = {
    "prior": (True, False),
    "coupling": (False, True),
    "both": (True, True),
}


def choose(name: str, value: str, options: dict) -> object:
    """`options[value]`, or a `ValueError` naming the option and the valid values."""
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(options)}")
    return options[value]


def class_conditioning(num_classes: int, conditioning: str) -> tuple[int, int]:
    """(K for the top prior, K for the couplings' conditioners), 0 where a component is not
    class-conditional: `conditioning` ∈ {prior, coupling, both} for `num_classes` K > 0."""
    prior, coupling = choose("class_conditioning", conditioning, CLASS_CONDITIONINGS)
    return num_classes * prior, num_classes * coupling


def make_transform(coupling: str, components: int = 32, min_scale: float = 0.0) -> ElementwiseMap:
    """A coupling's element-wise map by name; "mixture" has `components` logistics, "affine"
    the scale floor `min_scale` (0: the paper's form)."""
    kind = choose("coupling", coupling, COUPLINGS)
    if kind is MixtureCDF:
        return MixtureCDF(components)
    return Affine(min_scale) if kind is Affine else kind()


def make_permutation(permutation: str, channels: int) -> list[Bijection]:
    """The permutation of a step by name: one layer, or none for "none"."""
    kind = choose("permutation", permutation, PERMUTATIONS)
    return [] if kind is None else [kind(channels)]


def glow_step(
    channels: int,
    hidden_channels: int,
    coupling: str,
    permutation: str,
    components: int = 32,
    min_scale: float = 0.0,
    cond_channels: int = 0,
) -> list[Bijection]:
    """actnorm → permutation → coupling (Glow section 3, Figure 2a). Shapes: `[B, C, H, W]`.

    Without a permutation the step ends by swapping the channel halves (RealNVP's alternating
    masks), so that consecutive couplings transform different halves. With `cond_channels`
    the conditioner also sees `cond` (e.g. the class embedding) as extra input channels.
    """
    transform = make_transform(coupling, components, min_scale)
    id_channels = channels // 2
    conditioner = GlowConditioner(
        id_channels,
        transform.num_params * (channels - id_channels),
        hidden_channels,
        cond_channels,
    )
    mixing = make_permutation(permutation, channels)
    return [
        ActNorm(channels),
        *mixing,
        Coupling(conditioner, transform),
        *([] if mixing else [SwapHalves(ChannelSplit())]),
    ]


def flowpp_step(
    shape: tuple[int, int, int],
    split: str,
    transform: ElementwiseMap,
    permutation: str,
    conditioner: Callable[..., nn.Module],
) -> list[Bijection]:
    """Per-element actnorm → permutation → coupling → swap of the halves (Flow++ official code).

    `split` is "cb" (alternate columns, halves W) or "ch" (channel halves, C must be even);
    `conditioner(in_channels, out_channels, size=(H, W))` builds the coupling's network.
    Shapes: `[B, C, H, W]` → `[B, C, H, W]`.
    """
    c, h, w = shape
    if choose("split", split, SPLITS) is CheckerboardSplit:
        id_channels, tr_channels, size = c, c, (h, w // 2)
    else:
        id_channels, tr_channels, size = c // 2, c - c // 2, (h, w)
    net = conditioner(id_channels, transform.num_params * tr_channels, size=size)
    return [
        ActNorm(shape),
        *make_permutation(permutation, c),
        Coupling(net, transform, SPLITS[split]()),
        SwapHalves(SPLITS[split]()),
    ]
