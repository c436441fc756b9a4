"""The model contract shared by Glow and Flow++ (DESIGN section 3)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
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


class Objective(NamedTuple):
    """The training objective's terms, `[B]` nats each: log p(x|y) (the bound) and the
    auxiliary classifier's −log p(y|x) (None without a classifier)."""

    log_prob: Tensor
    class_nll: Tensor | None


class FlowModel(nn.Module):
    """uint8 images ⇄ standard-normal latents through `flow`, with the bound of DESIGN §1.

    log p(x) ≥ E_u[log N(eps; 0, I) + log|det ∂eps/∂y| − log q(u|x)] − D·ln N,
    with y = (x + u)/N and eps = flow(y). `eps` holds every level's latents in x's shape.

    With `num_classes` K > 0 the model is class-conditional: every method taking images or
    latents takes their `labels` (int64 `[B]`, or one int for all), the flow's layers receive
    the class embedding cond = one-hot(labels) `[B, K]`, and the bound is of log p(x|y).
    """

    class_loss_weight: float = 0.0  # weight of `class_nll` (in bits) in the training loss

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_levels: int,
        flow: Bijection,
        dequantizer: nn.Module,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 0 or num_classes == 1:
            raise ValueError(f"num_classes must be 0 (unconditional) or ≥ 2, got {num_classes}")
        self.image_shape = tuple(image_shape)
        self.num_levels = num_levels
        self.num_classes = num_classes
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

    def class_cond(self, labels: Tensor | int | None, batch: int) -> Tensor | None:
        """The class embedding cond = one-hot(labels) `[B, K]` in the parameters' dtype (None
        for an unconditional model), after checking `labels` against the model and the batch.

        Raises `TypeError`/`ValueError` naming the problem: labels for an unconditional model,
        none for a conditional one, a dtype other than int64, a length other than B, a class
        outside 0..K−1.
        """
        k = self.num_classes
        if labels is None:
            if k:
                raise ValueError(
                    f"this model is class-conditional ({k} classes): pass labels, int64 [B]"
                )
            return None
        if not k:
            raise ValueError("labels given to an unconditional model (num_classes=0)")
        dtype, device = self._float()
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((batch,), labels, dtype=torch.long)
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
            got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an int64 tensor [B] or an int, got {got}")
        if labels.dim() != 1 or len(labels) != batch:
            raise ValueError(f"expected {batch} labels (one per image), got {list(labels.shape)}")
        if labels.numel() and not torch.compiler.is_compiling():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= k:
                bad = low if low < 0 else high
                raise ValueError(f"labels must lie in 0..{k - 1}, found {bad}")
        return F.one_hot(labels.to(device), k).to(dtype)

    def initialize(
        self, x: Tensor, force: bool = False, labels: Tensor | int | None = None
    ) -> None:
        """Data-dependent init of every layer on one uint8 batch (Glow section 3.1); a
        class-conditional model takes the batch's labels too."""
        self.check_images(x)
        cond = self.class_cond(labels, len(x))
        if self.is_initialized and not force:
            raise RuntimeError("model is already initialised; pass force=True to redo it")
        dtype, device = self._float()
        generator = torch.Generator(device=device).manual_seed(0)
        if hasattr(self.dequantizer, "initialize"):  # a learned q(u|x) initialises first
            self.dequantizer.initialize(x.to(device), self.num_levels, dtype, generator)
        y, _ = self.dequantizer(x.to(device), self.num_levels, dtype, generator)
        initialize(self.flow, y, cond)
        self.initialized.fill_(True)

    def log_prob(
        self,
        x: Tensor,
        labels: Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The dequantization bound of DESIGN §1 in nats, `[B]`, with one draw of u: of
        log p(x), or of log p(x|y) for a class-conditional model given `labels` y."""
        if isinstance(labels, torch.Generator):
            raise TypeError("log_prob(x, labels=None, generator=None): pass generator= by name")
        return self.dequantized_log_prob(x, generator, labels=labels).log_prob

    def dequantized_log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
    ) -> DequantizedLogProb:
        """`log_prob` with the points it was taken at: y = (x + u)/N, u ~ q(u|x), and
        eps = flow(y), so a caller can check the flow's inverse there without another pass."""
        self.check_images(x)
        cond = self.class_cond(labels, len(x))
        dtype, device = self._float()
        y, log_q = self.dequantizer(x.to(device), self.num_levels, dtype, generator)
        log_prob, eps = self._bound(y, log_q, cond, dtype)
        return DequantizedLogProb(log_prob, y, eps)

    def _bound(
        self, y: Tensor, log_q: Tensor, cond: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """(log N(eps; 0, I) + log|det ∂eps/∂y| − log q(u|x) − D·ln N, eps) at
        eps = flow(y, cond): the bound `[B]` and the latents."""
        eps, logdet = self.flow(y, cond)
        log_pz = standard_normal_log_prob(eps.to(dtype))
        log_prob = (
            log_pz + logdet.to(dtype) - log_q.to(dtype) - self.num_dims * math.log(self.num_levels)
        )
        return log_prob, eps

    def objective(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
    ) -> Objective:
        """The training objective's terms: the bound of `log_prob`, and the auxiliary
        classifier's cross-entropy (`class_nll`) where the model has a classifier."""
        if not self.class_loss_weight:
            return Objective(self.log_prob(x, labels, generator=generator), None)
        result = self.dequantized_log_prob(x, generator, labels=labels)
        return Objective(result.log_prob, self.class_nll(result.eps, labels))

    def class_nll(self, eps: Tensor, labels: Tensor | int | None) -> Tensor | None:
        """−log p(y|x) `[B]` nats of an auxiliary classifier on the latents; None here (no
        classifier; Glow's ycond model has one)."""
        return None

    @torch.no_grad()
    def encode(self, x: Tensor, labels: Tensor | int | None = None) -> Tensor:
        """eps = flow((x + ½)/N): deterministic (eval mode), `[B, C, H, W]`.

        Runs in the parameters' dtype with autocast off. Exact round trips are a matter of
        that dtype: a float64 model (`model.double()`) gives decode(encode(x)) == x where float32
        rounding, amplified by an ill-conditioned trained flow, may not.
        """
        self.check_images(x)
        cond = self.class_cond(labels, len(x))
        dtype, device = self._float()
        with torch.autocast(device.type, enabled=False), evaluating(self.flow):
            return self.flow((x.to(device, dtype) + 0.5) / self.num_levels, cond)[0]

    @torch.no_grad()
    def decode(self, eps: Tensor, labels: Tensor | int | None = None) -> Tensor:
        """x = clamp(⌊N · flow⁻¹(eps)⌋, 0, N − 1) as uint8 (eval mode, autocast off)."""
        self._check_latents(eps)
        cond = self.class_cond(labels, len(eps))
        dtype, device = self._float()
        with torch.autocast(device.type, enabled=False), evaluating(self.flow):
            y = self.flow.inverse(eps.to(device, dtype), cond)[0]
        return (y * self.num_levels).floor().clamp(0, self.num_levels - 1).to(torch.uint8)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
    ) -> Tensor:
        """decode(T · eps, labels), eps ~ N(0, I) (Glow section 5, reduced temperature);
        a class-conditional model samples x ~ p(x|y) for `labels` y (`[n]`, or one int)."""
        if n < 1:
            raise ValueError(f"number of samples must be positive, got {n}")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"temperature must be finite and ≥ 0, got {temperature}")
        self.class_cond(labels, n)  # fails before drawing anything
        dtype, device = self._float()
        eps = torch.randn((n, *self.image_shape), generator=generator, dtype=dtype, device=device)
        return self.decode(temperature * eps, labels)

    @torch.no_grad()
    def class_log_probs(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """log p(x|c) `[B, K]` nats for every class c, all at the same draw of u, so the
        classes are compared on paired noise (eval mode, autocast off)."""
        if not self.num_classes:
            raise ValueError("classify needs a class-conditional model (num_classes > 0)")
        self.check_images(x)
        dtype, device = self._float()
        with torch.autocast(device.type, enabled=False), evaluating(self):
            y, log_q = self.dequantizer(x.to(device), self.num_levels, dtype, generator)
            return torch.stack(
                [
                    self._bound(y, log_q, self.class_cond(c, len(x)), dtype)[0]
                    for c in range(self.num_classes)
                ],
                dim=1,
            )

    def classify(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Bayes' rule with a uniform class prior (Glow section 5's class-conditional model):
        p(c|x) = softmax_c log p(x|c). Returns (argmax_c, int64 `[B]`; p(c|x), float `[B, K]`)."""
        log_probs = self.class_log_probs(x, generator)
        return log_probs.argmax(dim=1), log_probs.softmax(dim=1)


@torch.no_grad()
def class_rows(
    model: FlowModel, temperatures: Sequence[float], classes: Sequence[int], n: int, seed: int = 0
) -> Tensor:
    """Samples decode(T · eps, y=c) of a class-conditional model, one row of `n` for each
    (T, c), temperature-major, every row from the same base noise eps ~ N(0, I) (drawn as
    `imageflows.latent.temperature_rows` draws it), so rows differ by temperature and class
    alone. Shapes: uint8 `[len(temperatures) · len(classes) · n, C, H, W]`."""
    dtype, device = model._float()
    generator = torch.Generator(device).manual_seed(seed)
    eps = torch.randn((n, *model.image_shape), generator=generator, dtype=dtype, device=device)
    return torch.cat([model.decode(t * eps, c) for t in temperatures for c in classes])
