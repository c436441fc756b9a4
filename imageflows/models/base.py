"""The model contract shared by Glow and Flow++ (DESIGN section 3)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import Bijection, initialize, standard_normal_log_prob


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


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Run a block with `module` in eval mode (no dropout), then restore its mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class DequantizedLogProb(NamedTuple):
    """One draw of the bound: `log_prob` `[B]` nats, at y `[B, C, H, W]` with latents eps."""

    log_prob: Tensor
    y: Tensor
    eps: Tensor


class FlowModel(nn.Module):
    """uint8 images ⇄ standard-normal latents through `flow`, with the bound of DESIGN §1.

    log p(x) ≥ E_u[log N(eps; 0, I) + log|det ∂eps/∂y| − log q(u|x)] − D·ln N,
    with y = (x + u)/N and eps = flow(y). `eps` holds every level's latents in x's shape.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_levels: int,
        flow: Bijection,
        dequantizer: nn.Module,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_levels = num_levels
        self.flow = flow
        self.dequantizer = dequantizer
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized)

    def _float(self) -> tuple[torch.dtype, torch.device]:
        p = next(self.parameters())
        return p.dtype, p.device

    def check_images(self, x: Tensor) -> None:
        """Raise `TypeError`/`ValueError` naming the problem unless x is a valid image batch."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a uint8 image tensor, got {type(x).__name__}")
        if x.dtype != torch.uint8:
            raise TypeError(
                f"expected uint8 images with values in 0..{self.num_levels - 1}, got dtype "
                f"{x.dtype}; convert with (x * {self.num_levels - 1}).round().to(torch.uint8)"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape [B, {', '.join(map(str, self.image_shape))}], "
                f"got {list(x.shape)}"
            )
        # (under torch.compile the value check is left to the data loader: reading a value
        # back would split the compiled graph)
        if x.numel() and not torch.compiler.is_compiling() and int(x.max()) >= self.num_levels:
            raise ValueError(
                f"image values must lie in 0..{self.num_levels - 1} for a {self.num_levels}-level "
                f"model, found {int(x.max())}"
            )

    def _check_latents(self, eps: Tensor) -> None:
        if not isinstance(eps, Tensor) or not eps.is_floating_point():
            raise TypeError(f"expected a float latent tensor, got {getattr(eps, 'dtype', eps)}")
        if eps.dim() != 4 or tuple(eps.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected latents of shape [B, {', '.join(map(str, self.image_shape))}], "
                f"got {list(eps.shape)}"
            )
        if not torch.isfinite(eps).all():
            bad = int((~torch.isfinite(eps)).sum())
            raise ValueError(f"latents must be finite, found {bad} NaN or infinite values")

    def initialize(self, x: Tensor, force: bool = False) -> None:
        """Data-dependent init of every layer on one uint8 batch (Glow section 3.1)."""
        self.check_images(x)
        if self.is_initialized and not force:
            raise RuntimeError("model is already initialised; pass force=True to redo it")
        dtype, device = self._float()
        generator = torch.Generator(device=device).manual_seed(0)
        if hasattr(self.dequantizer, "initialize"):  # a learned q(u|x) initialises first
            self.dequantizer.initialize(x.to(device), self.num_levels, dtype, generator)
        y, _ = self.dequantizer(x.to(device), self.num_levels, dtype, generator)
        initialize(self.flow, y)
        self.initialized.fill_(True)

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The dequantization bound of DESIGN §1 in nats, `[B]`, with one draw of u."""
        return self.dequantized_log_prob(x, generator).log_prob

    def dequantized_log_prob(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> DequantizedLogProb:
        """`log_prob` with the points it was taken at: y = (x + u)/N, u ~ q(u|x), and
        eps = flow(y), so a caller can check the flow's inverse there without another pass."""
        self.check_images(x)
        dtype, device = self._float()
        y, log_q = self.dequantizer(x.to(device), self.num_levels, dtype, generator)
        eps, logdet = self.flow(y)
        log_pz = standard_normal_log_prob(eps.to(dtype))
        log_prob = (
            log_pz + logdet.to(dtype) - log_q.to(dtype) - self.num_dims * math.log(self.num_levels)
        )
        return DequantizedLogProb(log_prob, y, eps)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """eps = flow((x + ½)/N): deterministic (eval mode), `[B, C, H, W]`.

        Runs in the parameters' dtype with autocast off. Exact round trips are a matter of
        that dtype: a float64 model (`model.double()`) gives decode(encode(x)) == x where float32
        rounding, amplified by an ill-conditioned trained flow, may not.
        """
        self.check_images(x)
        dtype, device = self._float()
        with torch.autocast(device.type, enabled=False), evaluating(self.flow):
            return self.flow((x.to(device, dtype) + 0.5) / self.num_levels)[0]

    @torch.no_grad()
    def decode(self, eps: Tensor) -> Tensor:
        """x = clamp(⌊N · flow⁻¹(eps)⌋, 0, N − 1) as uint8 (eval mode, autocast off)."""
        self._check_latents(eps)
        dtype, device = self._float()
        with torch.autocast(device.type, enabled=False), evaluating(self.flow):
            y = self.flow.inverse(eps.to(device, dtype))[0]
        return (y * self.num_levels).floor().clamp(0, self.num_levels - 1).to(torch.uint8)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """decode(T · eps), eps ~ N(0, I) (Glow section 5, reduced temperature)."""
        if n < 1:
            raise ValueError(f"number of samples must be positive, got {n}")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"temperature must be finite and ≥ 0, got {temperature}")
        dtype, device = self._float()
        eps = torch.randn((n, *self.image_shape), generator=generator, dtype=dtype, device=device)
        return self.decode(temperature * eps)
