"""Flow++ (Ho et al. 2019): logit, then a layout of checkerboard and channel coupling stages."""

from __future__ import annotations

import re
from functools import partial

from ..layers import Bijection, Inverse, LearnedPrior, Logit, Reversible, Sequential, Squeeze
from ..nets import FlowppConditioner
from .base import FlowModel, resolve_levels
from .dequantize import make_dequantizer
from .steps import PERMUTATIONS, choose, flowpp_step, make_transform
from .steps import class_conditioning as class_conditioning_of

_STAGE = re.compile(r"(\d+)(cb|ch)|sq")


def parse_layout(layout: str) -> list[tuple[str, int]]:
    """ "4cb,sq,2ch,3cb" → [("cb", 4), ("sq", 1), ("ch", 2), ("cb", 3)]."""
    stages = []
    for token in layout.split(","):
        match = _STAGE.fullmatch(token.strip())
        if match is None or (match[1] is not None and int(match[1]) < 1):
            raise ValueError(
                f"bad stage {token.strip()!r} in layout {layout!r}; expected comma-separated "
                "'Ncb' (N checkerboard steps), 'Nch' (N channel steps) or 'sq' (squeeze), "
                "e.g. '4cb,sq,2ch,3cb'"
            )
        stages.append(("sq", 1) if match[2] is None else (match[2], int(match[1])))
    return stages


def _check_stage(kind: str, shape: tuple[int, int, int], layout: str) -> None:
    c, h, w = shape
    problem = {
        "sq": "an even height and width" if h % 2 or w % 2 else None,
        "cb": "an even width" if w % 2 else None,
        "ch": "an even number of channels" if c % 2 else None,
    }[kind]
    if problem:
        raise ValueError(
            f"layout {layout!r}: stage {kind!r} needs {problem}, got shape {c}x{h}x{w} there"
        )


class FlowPlusPlus(FlowModel):
    """Flow++: eps = unsqueeze(stages(logit(0.05 + 0.9·y))), no factor-out (Flow++ section 3).

    The defaults are the paper's CIFAR-10 model (official code): layout `4cb,sq,2ch,3cb`, 10
    blocks of 96 filters with 4-head attention, 32 logistics per mixture coupling, dropout 0.2,
    invertible 1x1 convolutions and a variational dequantizer of 4 mixture couplings (2 blocks
    each; `dequant_couplings`, `dequant_blocks`) on a context network of
    `dequant_context_channels`. A step is per-element actnorm → permutation → coupling → swap.
    `coupling` ∈ {mixture, affine, additive} and `permutation`, `dequantization` ∈ {variational,
    uniform} and `attention` switch the paper's components; `memory_saving` back-propagates each
    stage through its inverse.

    With `num_classes` K > 0 the model is class-conditional: by default
    (`class_conditioning="coupling"`) every coupling's conditioner sees one-hot y in each gated
    convolution (a learned per-class vector added to its hidden features, `FlowppConditioner`);
    "prior" (or "both") ends the flow with a learned per-channel Gaussian prior whose mean and
    log-scale are a zero-initialised linear map of one-hot y (`LearnedPrior`, as Glow's).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        layout: str = "4cb,sq,2ch,3cb",
        hidden_channels: int = 96,
        blocks: int = 10,
        components: int = 32,
        heads: int = 4,
        attention: bool = True,
        dropout: float = 0.2,
        coupling: str = "mixture",
        permutation: str = "conv1x1",
        dequantization: str = "variational",
        n_bits: int | None = None,
        num_levels: int | None = None,
        memory_saving: bool = False,
        min_scale: float = 0.1,
        dequant_couplings: int = 4,
        dequant_blocks: int = 2,
        dequant_context_channels: int = 32,
        num_classes: int = 0,
        class_conditioning: str = "coupling",
    ) -> None:
        prior_classes, coupling_classes = class_conditioning_of(num_classes, class_conditioning)
        net = dict(
            hidden_channels=hidden_channels,
            heads=heads,
            attention=attention,
            dropout=dropout,
        )
        conditioner = partial(
            FlowppConditioner, blocks=blocks, cond_channels=coupling_classes, **net
        )
        choose("permutation", permutation, PERMUTATIONS)  # fails before anything is built
        chain = Reversible if memory_saving else Sequential
        shape = tuple(image_shape)
        layers: list[Bijection] = [Logit(0.05)]
        squeezes = 0
        for kind, count in parse_layout(layout):
            _check_stage(kind, shape, layout)
            if kind == "sq":
                layers.append(Squeeze())
                squeezes += 1
                shape = (4 * shape[0], shape[1] // 2, shape[2] // 2)  # (4C, H/2, W/2)
                continue
            steps = [
                layer
                for _ in range(count)
                for layer in flowpp_step(
                    shape,
                    kind,
                    make_transform(coupling, components, min_scale),
                    permutation,
                    conditioner,
                )
            ]
            layers.append(chain(steps))
        layers += [Inverse(Squeeze()) for _ in range(squeezes)]  # back to (C, H, W)
        if prior_classes:
            layers.append(LearnedPrior(image_shape[0], prior_classes))
        dequantizer = make_dequantizer(
            dequantization,
            tuple(image_shape),
            couplings=dequant_couplings,
            blocks=dequant_blocks,
            context_channels=dequant_context_channels,
            components=components,
            **net,
        )
        super().__init__(
            image_shape,
            resolve_levels(n_bits, num_levels),
            Sequential(layers),
            dequantizer,
            num_classes,
        )
        self.layout, self.hidden_channels, self.blocks = layout, hidden_channels, blocks
