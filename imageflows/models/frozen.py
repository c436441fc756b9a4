"""Inference copies: a model whose parameter-derived tensors are computed once, by one call."""

from __future__ import annotations

import copy

from torch import nn

from .base import FlowModel


def freeze(model: FlowModel) -> FlowModel:
    """A copy of `model` for encode, decode and sample only: eval mode, no gradients, and every
    submodule that offers `frozen()` replaced by it, so W and W⁻¹ of the 1x1 convolutions and
    the folded or weight-normalised kernels of the conditioners are computed here, once, instead
    of at every call. Same outputs as `model`; the copy is not for training or saving (its
    state_dict keys differ), and the caller owns it (drop `model` to keep one copy in memory).
    """
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    _replace_frozen(frozen)
    return frozen


def _replace_frozen(module: nn.Module) -> None:
    for name, child in module.named_children():
        if hasattr(child, "frozen"):
            setattr(module, name, child.frozen())
        else:
            _replace_frozen(child)
