"""Likelihood in the units papers report, and the evaluation of a model on a dataset."""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
    draws = torch.stack([model.log_prob(x, generator=generator) for _ in range(samples)])
    return torch.logsumexp(draws.double(), dim=0) - math.log(samples)


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch `index`'s dequantization noise: `seed · 1000003 + index`."""
    return seed * 1_000_003 + index


@torch.no_grad()
def evaluate(
    model,
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
    few images far from the data cannot swamp. `roundtrip_failures` counts the images with
    decode(encode(x)) ≠ x and `recon_max_abs` is `max |x − decode(encode(x))|` in levels. Runs
    in eval mode and the parameters' dtype, autocast off.

    Returns:
        `{"bpd", "bpd_median", "bpd_p1", "bpd_p99", "n", "iw_samples", "roundtrip_failures",
        "recon_max_abs"}` over the shard's images (the bits/dim are NaN for a shard without
        images).
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
    bits, failures, recon = [], 0, 0
    try:
        with torch.autocast(device.type, enabled=False):
            batches = images.split(batch_size)
            for i in range(rank, len(batches), world_size):
                x = batches[i].to(device)
                generator = torch.Generator(device).manual_seed(batch_seed(seed, i))
                log_prob = importance_weighted_log_prob(model, x, iw_samples, generator)
                bits.append(bits_per_dim(log_prob.double(), model.num_dims).cpu())
                error = (model.decode(model.encode(x)).int() - x.int()).abs().flatten(1).amax(1)
                failures += int((error > 0).sum())
                recon = max(recon, int(error.max()))
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
        "recon_max_abs": recon,
    }
