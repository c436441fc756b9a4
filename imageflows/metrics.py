"""Likelihood in the units papers report, and the evaluation of a model on a dataset."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from imageflows.models.base import FlowModel


def bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """bits/dim = −log p(x) / (D · ln 2), with log p(x) in nats (DESIGN section 1)."""
    return -log_prob / (num_dims * math.log(2))


def importance_weighted_log_prob(
    model, x: Tensor, samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """log (1/K) Σ_k p(x, u_k) / q(u_k|x) over K draws of u, `[B]` nats (Flow++ section 3.1).

    A lower bound on log p(x) that tightens with K, for any q (uniform included); K = 1 is the
    one-draw bound of `model.log_prob`.
    """
    return log_mean_exp([model.log_prob(x, generator=generator) for _ in range(samples)])


def log_mean_exp(draws: list[Tensor]) -> Tensor:
    """log (1/K) Σ_k exp(draws_k) in float64, over a list of K `[B]` tensors."""
    return torch.logsumexp(torch.stack(draws).double(), dim=0) - math.log(len(draws))


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch `index`'s dequantization noise: `seed · 1000003 + index`."""
    return seed * 1_000_003 + index


@torch.no_grad()
def evaluate(
    model: FlowModel,
    images: Tensor,
    batch_size: int = 500,
    seed: int = 0,
    iw_samples: int = 1,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Bits/dim and reconstruction error of `model` on uint8 `images` `[N, C, H, W]`.

    `bpd` is the mean over images of the bound of DESIGN §1, importance-weighted over
    `iw_samples` draws of u. The images go in batches of `batch_size`, in order, and batch `i`
    draws its noise from a generator seeded `batch_seed(seed, i)`: the one rule of training's
    periodic evaluation and of `imageflows eval`, so the same weights, images, seed and batch
    size give the same number, however the batches are shared out. `shard=(rank, world_size)`
    evaluates only the batches `i ≡ rank (mod world_size)`. Beside the mean (the papers'
    figure) come the median and the 1st and 99th percentiles of the per-image bits/dim, which a
    few images far from the data cannot swamp.

    The round trip is checked where the likelihood was taken, at no second forward pass: the
    first draw's y = (x + u)/N and eps = flow(y) give ŷ = flow⁻¹(eps), and
    `recon_max_abs` is the largest |N·(ŷ − y)| in levels (capped at N; NaN counts as N).
    `roundtrip_failures_float32` counts the images where it reaches ½ somewhere: the margin
    that decode(encode(x)) = ⌊N·flow⁻¹(flow((x + ½)/N))⌋ = x has at the cell's centre, here
    asked at random points of the cell. Those images alone are checked again in float64 (a
    float64 copy of the model, made only when one fails): `roundtrip_failures` counts the ones
    that fail there too, the round trip `imageflows encode`/`decode` (float64) give. Runs in
    eval mode and the parameters' dtype (float32 in every trained run), autocast off.

    Returns:
        `{"bpd", "bpd_median", "bpd_p1", "bpd_p99", "n", "iw_samples", "roundtrip_failures",
        "roundtrip_failures_float32", "recon_max_abs"}` over the shard's images (the
        bits/dim are NaN for a shard without images).
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            "evaluate: images must be a uint8 tensor [N, C, H, W], got "
            f"{getattr(images, 'dtype', type(images).__name__)} "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    if len(images) == 0:
        raise ValueError("evaluate: no images")
    if batch_size < 1 or iw_samples < 1:
        raise ValueError(
            f"evaluate: batch_size and iw_samples must be ≥ 1, got {batch_size}, {iw_samples}"
        )
    rank, world_size = shard
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bits, failures, fast_failures, recon = [], 0, 0, 0.0
    exact: FlowModel | None = model if next(model.parameters()).dtype == torch.float64 else None
    try:
        with torch.autocast(device.type, enabled=False):
            batches = images.split(batch_size)
            for i in range(rank, len(batches), world_size):
                x = batches[i].to(device)
                generator = torch.Generator(device).manual_seed(batch_seed(seed, i))
                first = model.dequantized_log_prob(x, generator)
                further = [model.log_prob(x, generator) for _ in range(iw_samples - 1)]
                log_prob = log_mean_exp([first.log_prob, *further])
                bits.append(bits_per_dim(log_prob, model.num_dims).cpu())
                error = reconstruction_error(model, first.y, first.eps)
                recon = max(recon, float(error.max()))
                failed = error >= 0.5
                fast_failures += int(failed.sum())
                if failed.any():
                    exact = exact or copy.deepcopy(model).double()
                    y = first.y[failed].double()
                    still = reconstruction_error(exact, y, exact.flow(y)[0]) >= 0.5
                    failures += int(still.sum())
    finally:
        model.train(was_training)
    per_image = torch.cat(bits) if bits else torch.full((1,), math.nan, dtype=torch.float64)
    p1, median, p99 = torch.quantile(per_image, per_image.new_tensor([0.01, 0.5, 0.99])).tolist()
    return {
        "bpd": per_image.mean().item(),
        "bpd_median": median,
        "bpd_p1": p1,
        "bpd_p99": p99,
        "n": sum(len(b) for b in bits),
        "iw_samples": iw_samples,
        "roundtrip_failures": failures,
        "roundtrip_failures_float32": fast_failures,
        "recon_max_abs": recon,
    }


def reconstruction_error(model: FlowModel, y: Tensor, eps: Tensor) -> Tensor:
    """max over dimensions of |N·(flow⁻¹(eps) − y)| per image, in levels, `[B]`, capped at N
    (a non-finite reconstruction counts as N): how far the flow's inverse lands from y."""
    y_hat = model.flow.inverse(eps)[0]
    error = ((y_hat.double() - y.double()) * model.num_levels).abs().flatten(1).amax(1)
    return error.nan_to_num(nan=model.num_levels).clamp(max=model.num_levels)
