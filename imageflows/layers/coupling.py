"""Coupling layers (NICE, RealNVP section 3.3, Glow section 3.3, Flow++ section 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijection, Recomputed, zero_logdet
from .elementwise import ElementwiseMap


class ChannelSplit(nn.Module):
    """Split channels into a conditioning half (the first ⌊C/2⌋) and a transformed half."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = x.shape[1] // 2
        return x[:, :c], x[:, c:]  # (B, C/2, H, W) each

    def merge(self, x_id: Tensor, x_tr: Tensor) -> Tensor:
        return torch.cat([x_id, x_tr], dim=1)


class CheckerboardSplit(nn.Module):
    """Split alternate columns: the even ones condition, the odd ones are transformed.

    The official Flow++ code's "checkerboard" (`CheckerboardSplit`): each half is
    `[B, C, H, W/2]`, so the conditioner runs at half the width, half the cost of a masked
    checkerboard.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % 2:
            raise ValueError(f"CheckerboardSplit needs an even width, got {x.shape[-1]}")
        pairs = x.unflatten(-1, (-1, 2))  # (B, C, H, W/2, 2)
        return pairs[..., 0], pairs[..., 1]  # (B, C, H, W/2) each

    def merge(self, x_id: Tensor, x_tr: Tensor) -> Tensor:
        return torch.stack([x_id, x_tr], dim=-1).flatten(-2)  # (B, C, H, W)


class SwapHalves(Bijection):
    """Exchange the two halves of a split, so the next coupling transforms the other half.

    Flow++'s `TupleFlip`; an involution and a permutation, so log|det| = 0. The halves must
    have the same shape (an even channel count for `ChannelSplit`).
    """

    def __init__(self, split: nn.Module) -> None:
        super().__init__()
        self.split = split

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        first, second = self.split(x)
        if first.shape != second.shape:
            raise ValueError(
                f"SwapHalves needs halves of equal shape, got {list(first.shape)} and "
                f"{list(second.shape)}"
            )
        return self.split.merge(second, first), zero_logdet(x)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.forward(z, cond)


class Coupling(Bijection):
    """Split → conditioner → element-wise bijection → merge.

    (x_id, x_tr) = split(x);  θ = NN(x_id, cond);  z = merge(x_id, f(x_tr; θ)).
    The Jacobian is triangular, so log|det| = Σ log|∂f/∂x_tr|. The conditioner maps
    `[B, C_id, H, W]` (and `cond`) to `[B, P·C_tr, H, W]` with P = `transform.num_params`.
    """

    def __init__(
        self,
        conditioner: nn.Module,
        transform: ElementwiseMap,
        split: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.transform = transform
        self.split = split if split is not None else ChannelSplit()

    def theta(self, x_id: Tensor, cond: Tensor | None) -> Tensor:
        """θ = NN(x_id, cond), shaped `[B, P, C_tr, H, W]` in x_id's dtype."""
        h = self.conditioner(x_id) if cond is None else self.conditioner(x_id, cond)
        # (B, P·C_tr, H, W) → (B, P, C_tr, H, W); the element-wise algebra stays in x's dtype
        return h.unflatten(1, (self.transform.num_params, -1)).to(x_id.dtype)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_id, x_tr = self.split(x)
        z_tr, logdet = self.transform(x_tr, self.theta(x_id, cond))
        return self.split.merge(x_id, z_tr), logdet.flatten(1).sum(1)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_id, z_tr = self.split(z)
        x_tr, logdet = self.transform.inverse(z_tr, self.theta(z_id, cond))
        return self.split.merge(z_id, x_tr), logdet.flatten(1).sum(1)

    def recompute(self, z: Tensor, cond: Tensor | None = None) -> Recomputed:
        """RevNet's reconstruction (Gomez et al. 2017, section 3): x_id = z_id, so one
        conditioner pass θ = NN(z_id) serves both the inverse and the recomputed forward.

        The handle is z as a leaf: its first half is x_id itself, and its second half carries
        x_tr's value with an identity Jacobian, so gradients w.r.t. the handle are those w.r.t. x.
        """
        handle = z.detach().requires_grad_(True)
        x_id, z_tr = self.split(handle)
        theta = self.theta(x_id, cond)
        with torch.no_grad():
            x_tr = self.transform.inverse(z_tr, theta)[0]
        x_tr_graph = (z_tr - z_tr.detach()) + x_tr  # exactly x_tr's value; ∂/∂z_tr = I
        z_tr, logdet = self.transform(x_tr_graph, theta)
        x = self.split.merge(x_id, x_tr).detach()
        return Recomputed(x, handle, self.split.merge(x_id, z_tr), logdet.flatten(1).sum(1))
