"""One training step, the one that `train` runs and `imageflows bench` times (DESIGN §5, §7).

The objective is the mean bits/dim of the batch, `−log p(x) / (D · ln 2)` with `log p(x)` the
one-draw dequantization bound of DESIGN §1, minimised by Adam (Glow section 5, Flow++
section 4) after clipping the gradient's global norm. A class-conditional model is trained on
log p(x|y); one with a classifier (Glow's `ycond`) adds `class_loss_weight` times the
classifier's cross-entropy in bits, `−log p(y|x) / ln 2` per image (openai/glow's
`bits_x + weight_y · bits_y`), which is reported apart and never enters the bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from imageflows.metrics import bits_per_dim
from imageflows.models import FlowModel, Objective
from imageflows.train.distributed import DistEnv, all_reduce

# (x, generator[, labels]) ↦ log p(x) `[B]` or an `Objective`: `model.log_prob`,
# `model.objective`, or the module DDP wraps around the latter; labels only when given.
LogProb = Callable[..., Tensor | Objective]


class StepResult(NamedTuple):
    bpd: float | None  # the global batch's mean bits/dim; None: not finite, update skipped
    grad_norm: float  # this rank's gradient norm before clipping
    class_bits: float | None = None  # the classifier's mean cross-entropy in bits, if any


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (Glow section 5, Flow++ section 4) as one fused kernel over all parameters.

    A Glow has hundreds of small parameters (actnorm, LU factors); the per-parameter loop of
    plain Adam costs about a tenth of a CPU training step, the fused update a fiftieth.
    """
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def batch_bpd(
    model: FlowModel,
    x: Tensor,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    log_prob: LogProb | None = None,
) -> Tensor:
    """Bits/dim `[B]` of the uint8 batch `x` `[B, C, H, W]`, the training forward of an
    unconditional model (`log_prob`, default `model.log_prob`)."""
    return batch_bits(model, x, generator, precision, log_prob or model.log_prob)[0]


def batch_bits(
    model: FlowModel,
    x: Tensor,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    log_prob: LogProb | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(bits/dim `[B]`, the classifier's cross-entropy in bits `[B]` or None) of the uint8
    batch `x` `[B, C, H, W]` with its `labels` (class-conditional models), the training forward.

    `precision="bf16"` autocasts the forward only: the model keeps its main path, log-dets and
    the loss in float32 (DESIGN §3), and the conditioners run in bf16.
    """
    forward = model.objective if log_prob is None else log_prob
    extra = () if labels is None else (labels,)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16"):
        out = forward(x, generator, *extra)
    log_p, class_nll = (out, None) if isinstance(out, Tensor) else out
    class_bits = None if class_nll is None else class_nll.float() / math.log(2)
    return bits_per_dim(log_p.float(), model.num_dims), class_bits


def train_step(
    model: FlowModel,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    labels: Tensor | None = None,
    log_prob: LogProb | None = None,
    grad_clip: float = 0.0,
    precision: str = "fp32",
    batch_size: int | None = None,
    env: DistEnv | None = None,
) -> StepResult:
    """One optimizer step on `x`, this rank's slice of a global batch of `batch_size` images.

    The loss `Σ_i bpd_i · W / B` over this rank's images makes DDP's average of the `W` ranks'
    gradients the gradient of the global batch's mean. The gradient's norm is clipped to
    `grad_clip` (0: measured, not clipped). A step whose loss or gradient is not finite on some
    rank updates nothing on any rank.

    Args:
        model: the flow; its parameters are the optimizer's.
        optimizer: applies the update (its learning rate is the caller's to set).
        x: uint8 images `[b, C, H, W]`.
        generator: the dequantization noise (None: torch's global generator).
        labels: int64 `[b]` classes of `x`, for a class-conditional model.
        log_prob: the forward to differentiate, e.g. DDP's wrapper (default `model.objective`).
        grad_clip: max global gradient norm; 0 turns clipping off.
        precision: "fp32" | "bf16" (see `batch_bpd`).
        batch_size: images in the global batch (default `len(x)`, a single process).
        env: the process group whose ranks share the batch (default: this process alone).
    """
    world_size = env.world_size if env is not None else 1
    batch_size = batch_size or len(x)
    bpd, class_bits = batch_bits(model, x, generator, precision, log_prob, labels)
    objective = bpd if class_bits is None else bpd + model.class_loss_weight * class_bits
    loss = objective.sum() * (world_size / batch_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # max_norm=inf clips nothing but still measures the norm.
    grad_norm = nn.utils.clip_grad_norm_(
        model.parameters(), grad_clip if grad_clip > 0 else math.inf
    )
    # One sum over ranks serves the logged loss and the skip decision, which therefore is the
    # same on every rank: a non-finite value anywhere makes the sums non-finite.
    class_sum = bpd.new_zeros(()) if class_bits is None else class_bits.detach().sum()
    totals = torch.stack([bpd.detach().sum(), grad_norm, class_sum]).tolist()
    bpd_sum, norm_sum, class_sum = all_reduce(totals, env) if env is not None else totals
    if not (math.isfinite(bpd_sum) and math.isfinite(norm_sum) and math.isfinite(class_sum)):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(None, grad_norm.item())
    optimizer.step()
    class_mean = None if class_bits is None else class_sum / batch_size
    return StepResult(bpd_sum / batch_size, grad_norm.item(), class_mean)
