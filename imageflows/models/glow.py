"""Glow (Kingma & Dhariwal 2018): the multi-scale flow of K steps by L levels."""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import LearnedPrior, Sequential, Shift
from .base import FlowModel, resolve_levels
from .dequantize import make_dequantizer
from .multiscale import MultiScaleFlow, top_latent
from .steps import class_conditioning as class_conditioning_of
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

    With `num_classes` K > 0 the model is class-conditional as openai/glow's `ycond` (Glow
    section 5): by default (`class_conditioning="prior"`) the top prior's mean and log-scale
    add a zero-initialised linear map of one-hot y, and a classifier on the top latent
    (mean-pool → zero-initialised linear → logits) adds `class_loss_weight` times its
    cross-entropy (in bits) to the training loss; "coupling" (or "both") also feeds one-hot y to
    every coupling's conditioner as extra input channels.
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
        num_classes: int = 0,
        class_conditioning: str = "prior",
        class_loss_weight: float = 0.01,
    ) -> None:
        c, h, w = image_shape
        prior_classes, coupling_classes = class_conditioning_of(num_classes, class_conditioning)
        if class_loss_weight < 0:
            raise ValueError(f"class_loss_weight must be ≥ 0, got {class_loss_weight}")
        classifier = num_classes > 0 and class_loss_weight > 0
        if classifier and coupling_classes:
            raise ValueError(
                f"class_conditioning={class_conditioning!r} makes the top latent depend on the "
                "class, which the classifier would read back; set class_loss_weight=0"
            )
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
            cond_channels=coupling_classes,
        )
        body = MultiScaleFlow(c, levels, depth, step, memory_saving, prior_classes)
        flow = Sequential([Shift(-0.5), body])
        dequantizer = make_dequantizer(
            dequantization,
            tuple(image_shape),
            components=components,
            couplings=dequant_couplings,
            blocks=dequant_blocks,
            context_channels=dequant_context_channels,
        )
        super().__init__(
            image_shape, resolve_levels(n_bits, num_levels), flow, dequantizer, num_classes
        )
        self.levels, self.depth, self.hidden_channels = levels, depth, hidden_channels
        self.class_loss_weight = class_loss_weight if classifier else 0.0
        # in a list, so that the prior stays registered once (inside the flow)
        self.top_prior = [m for m in body.modules() if isinstance(m, LearnedPrior)][-1:]
        top_channels = 2 ** (levels + 1) * c
        self.classifier = nn.Linear(top_channels, num_classes) if classifier else None
        if self.classifier is not None:  # openai/glow's linear_zeros
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)

    def class_logits(self, eps: Tensor, cond: Tensor) -> Tensor:
        """The classifier's logits `[B, K]` from the top latent z_top: mean over positions,
        then a linear map (openai/glow `ycond`). z_top = prior⁻¹(eps_top) does not depend on
        the class embedding `cond` (which only standardises it: eps_top = (z_top − μ_y)/σ_y)."""
        z_top = self.top_prior[0].inverse(top_latent(eps, self.levels), cond)[0]
        return self.classifier(z_top.mean(dim=(2, 3)))

    def class_nll(self, eps: Tensor, labels: Tensor | int | None) -> Tensor | None:
        """−log p(y|z_top) `[B]` nats of the classifier, None without one."""
        if self.classifier is None:
            return None
        cond = self.class_cond(labels, len(eps))
        logits = self.class_logits(eps, cond)
        return F.cross_entropy(logits.float(), cond.argmax(dim=1), reduction="none")
