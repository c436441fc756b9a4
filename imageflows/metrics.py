"""Likelihood in the units papers report, and the evaluation of a model on a dataset."""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor

from imageflows.models.base import FlowModel, evaluating


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


class ImageScores(NamedTuple):
    """Per-image results of `score_images`, in the order of `index` (the images scored)."""

    index: Tensor  # [n] int64: positions in the images given
    bpd: Tensor  # [n] float64: bits/dim of the bound, importance-weighted over the draws
    roundtrip_error: Tensor  # [n] float64: |N·(flow⁻¹(flow(y)) − y)| in levels, model's dtype
    roundtrip_failed: Tensor  # [n] bool: still ≥ ½ level in float64
    # class-conditional models only (else None), at the first draw's noise:
    predicted: Tensor | None = None  # [n] int64: the Bayes classifier's argmax_c log p(x|c)
    bpd_marginal: Tensor | None = None  # [n] float64: of log p(x) = logsumexp_c log p(x|c) − log K


@torch.no_grad()
def score_images(
    model: FlowModel,
    images: Tensor,
    batch_size: int = 500,
    seed: int = 0,
    iw_samples: int = 1,
    shard: tuple[int, int] = (0, 1),
    labels: Tensor | None = None,
) -> ImageScores:
    """Bits/dim and round-trip error of each of the uint8 `images` `[N, C, H, W]`.

    The bits/dim are the bound of DESIGN §1, importance-weighted over `iw_samples` draws of u.
    The images go in batches of `batch_size`, in order, and batch `i` draws its noise from a
    generator seeded `batch_seed(seed, i)`: the one rule of training's periodic evaluation and
    of `imageflows eval`, so the same weights, images, seed and batch size give the same
    numbers, however the batches are shared out. `shard=(rank, world_size)` scores only the
    batches `i ≡ rank (mod world_size)`.

    The round trip is checked where the likelihood was taken, at no second forward pass: the
    first draw's y = (x + u)/N and eps = flow(y) give ŷ = flow⁻¹(eps), and `roundtrip_error`
    is max |N·(ŷ − y)| in levels (capped at N; NaN counts as N). Where it reaches ½ (the
    margin that decode(encode(x)) = ⌊N·flow⁻¹(flow((x + ½)/N))⌋ = x has at the cell's
    centre, here asked at random points of the cell), the image is checked again in float64
    (a float64 copy of the model, made only when one fails): `roundtrip_failed` marks the
    images that fail there too, the round trip `imageflows encode`/`decode` (float64) give.
    Runs in eval mode and the parameters' dtype (float32 in every trained run), autocast off.

    A class-conditional model takes the images' `labels` (int64 `[N]`): the bits/dim are then
    of log p(x|y), and each image is also classified by Bayes' rule (`model.classify`, at the
    first draw's noise), giving `predicted` and the marginal `bpd_marginal`.
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
    exact: FlowModel | None = model if next(model.parameters()).dtype == torch.float64 else None
    index, bits, errors, failed, predicted, marginal = [], [], [], [], [], []
    with torch.autocast(device.type, enabled=False), evaluating(model):
        batches = images.split(batch_size)
        label_batches = [None] * len(batches) if labels is None else labels.split(batch_size)
        for i in range(rank, len(batches), world_size):
            x, batch_labels = batches[i].to(device), label_batches[i]
            cond = model.class_cond(batch_labels, len(x))
            if model.num_classes:
                generator = torch.Generator(device).manual_seed(batch_seed(seed, i))
                log_probs = model.class_log_probs(x, generator)  # (B, K)
                predicted.append(log_probs.argmax(dim=1))
                marginal_log_prob = log_mean_exp(list(log_probs.T))
                marginal.append(bits_per_dim(marginal_log_prob, model.num_dims))
            generator = torch.Generator(device).manual_seed(batch_seed(seed, i))
            first = model.dequantized_log_prob(x, generator, labels=batch_labels)
            further = [model.log_prob(x, batch_labels, generator) for _ in range(iw_samples - 1)]
            bits.append(bits_per_dim(log_mean_exp([first.log_prob, *further]), model.num_dims))
            error = reconstruction_error(model, first.y, first.eps, cond)
            still = error >= 0.5
            if still.any():
                exact = exact or copy.deepcopy(model).double()
                y = first.y[still].double()
                c = None if cond is None else cond[still].double()
                still[still.clone()] = (
                    reconstruction_error(exact, y, exact.flow(y, c)[0], c) >= 0.5
                )
            index.append(torch.arange(i * batch_size, i * batch_size + len(x)))
            errors.append(error)
            failed.append(still)
    if not index:  # a shard without images
        index, bits, errors, failed = [[torch.zeros(0, dtype=t)] for t in _SCORE_DTYPES]
        predicted, marginal = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0).double()]
    parts = [index, bits, errors, failed] + ([predicted, marginal] if model.num_classes else [])
    return ImageScores(*(torch.cat(part).cpu() for part in parts))


_SCORE_DTYPES = (torch.long, torch.float64, torch.float64, torch.bool)


def merge_scores(parts: list[ImageScores]) -> ImageScores:
    """The shards' `ImageScores` as one, in image order: what one `score_images` call over all
    the batches gives."""
    fields = [None if f[0] is None else torch.cat(f) for f in zip(*parts, strict=True)]
    order = fields[0].argsort()
    return ImageScores(*(None if field is None else field[order] for field in fields))


def evaluate(
    model: FlowModel,
    images: Tensor,
    batch_size: int = 500,
    seed: int = 0,
    iw_samples: int = 1,
    labels: Tensor | None = None,
) -> dict:
    """Bits/dim and round trips of `model` on uint8 `images`: `score_images`, `summarize`d."""
    scores = score_images(model, images, batch_size, seed, iw_samples, labels=labels)
    return summarize(scores, iw_samples, labels)


def summarize(scores: ImageScores, iw_samples: int = 1, labels: Tensor | None = None) -> dict:
    """The figures of `scores` (of `score_images` over `iw_samples` draws).

    `bpd` is the mean over images (the papers' figure); beside it come the median and the 1st
    and 99th percentiles of the per-image bits/dim, which a few images far from the data
    cannot swamp. `recon_max_abs` is the largest `roundtrip_error` (levels, model's dtype),
    `roundtrip_failures_float32` the number of images where it reaches ½ and
    `roundtrip_failures` the number that fail in float64 too.

    For a class-conditional model's scores, given the images' `labels`: `bpd` and its
    percentiles are the conditional bits/dim of log p(x|y_true), and two keys are added:
    `accuracy`, the fraction of images that the Bayes classifier (`model.classify`) gets
    right, and `bpd_marginal`, the mean bits/dim of log p(x) = logsumexp_c log p(x|c) − log K.

    Returns:
        `{"bpd", "bpd_median", "bpd_p1", "bpd_p99", "n", "iw_samples", "roundtrip_failures",
        "roundtrip_failures_float32", "recon_max_abs"}` (and `"accuracy", "bpd_marginal"`)
        (the bits/dim are NaN for scores of no images).
    """
    n = len(scores.index)
    per_image = scores.bpd if n else torch.full((1,), math.nan, dtype=torch.float64)
    p1, median, p99 = torch.quantile(per_image, per_image.new_tensor([0.01, 0.5, 0.99])).tolist()
    return {
        "bpd": per_image.mean().item(),
        "bpd_median": median,
        "bpd_p1": p1,
        "bpd_p99": p99,
        "n": n,
        "iw_samples": iw_samples,
        "roundtrip_failures": int(scores.roundtrip_failed.sum()),
        "roundtrip_failures_float32": int((scores.roundtrip_error >= 0.5).sum()),
        "recon_max_abs": float(scores.roundtrip_error.max()) if n else 0.0,
    } | (_class_figures(scores, labels) if scores.predicted is not None else {})


def _class_figures(scores: ImageScores, labels: Tensor) -> dict:
    """`accuracy` and `bpd_marginal` of a class-conditional model's scores (NaN: no images)."""
    if not len(scores.index):
        return {"accuracy": math.nan, "bpd_marginal": math.nan}
    correct = scores.predicted == labels.cpu()[scores.index]
    return {
        "accuracy": correct.double().mean().item(),
        "bpd_marginal": scores.bpd_marginal.mean().item(),
    }


def reconstruction_error(
    model: FlowModel, y: Tensor, eps: Tensor, cond: Tensor | None = None
) -> Tensor:
    """max over dimensions of |N·(flow⁻¹(eps) − y)| per image, in levels, `[B]`, capped at N
    (a non-finite reconstruction counts as N): how far the flow's inverse lands from y (given
    the class embedding `cond` of a class-conditional model)."""
    y_hat = model.flow.inverse(eps, cond)[0]
    error = ((y_hat.double() - y.double()) * model.num_levels).abs().flatten(1).amax(1)
    return error.nan_to_num(nan=model.num_levels).clamp(max=model.num_levels)
