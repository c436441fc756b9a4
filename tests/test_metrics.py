"""Bits/dim, the importance-weighted bound and evaluation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import imageflows as imf
from imageflows.metrics import (
    batch_seed,
    bits_per_dim,
    evaluate,
    importance_weighted_log_prob,
    merge_scores,
    score_images,
    summarize,
)
from imageflows.nets import ZeroConv2d


class TwoDraws(torch.nn.Module):
    """A stand-in model whose log_prob alternates between -1 and -5 nats per draw."""

    num_dims = 2

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.draws = itertools.cycle([-1.0, -5.0])

    def log_prob(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.full((len(x),), next(self.draws))


def test_bits_per_dim_formula() -> None:
    assert bits_per_dim(torch.tensor([-10 * math.log(2)]), 5).item() == pytest.approx(2.0)


def test_importance_weighted_bound_is_log_mean_exp_of_draws() -> None:
    x = torch.zeros(3, 1, 1, 2, dtype=torch.uint8)
    got = importance_weighted_log_prob(TwoDraws(), x, samples=2)
    torch.testing.assert_close(
        got, torch.full((3,), math.log((math.exp(-1) + math.exp(-5)) / 2)).double()
    )


def test_evaluate_one_draw_equals_log_prob_and_more_draws_tighten() -> None:
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17)
    images = torch.randint(0, 17, (12, 1, 8, 8), dtype=torch.uint8)
    model.initialize(images)
    one = evaluate(model, images, batch_size=5, seed=3)
    by_hand = torch.cat(
        [
            model.log_prob(x, generator=torch.Generator().manual_seed(batch_seed(3, i)))
            for i, x in enumerate(images.split(5))
        ]
    )
    assert one["bpd"] == pytest.approx(bits_per_dim(by_hand, 64).mean().item(), rel=1e-6)
    assert one["recon_max_abs"] < 1e-3 and one["n"] == 12 and one["iw_samples"] == 1
    per_image = bits_per_dim(by_hand.double(), 64)
    p1, median, p99 = torch.quantile(per_image, torch.tensor([0.01, 0.5, 0.99]).double())
    assert one["bpd_median"] == pytest.approx(median.item(), rel=1e-6)
    assert one["bpd_p1"] == pytest.approx(p1.item(), rel=1e-6)
    assert one["bpd_p99"] == pytest.approx(p99.item(), rel=1e-6)
    assert one["roundtrip_failures"] == 0
    many = evaluate(model, images, batch_size=5, seed=3, iw_samples=8)
    assert many["bpd"] < one["bpd"]
    with pytest.raises(TypeError, match="uint8"):
        evaluate(model, images.float())


def test_each_batch_has_its_own_noise_so_shards_add_up() -> None:
    """Batch i's noise is seeded `batch_seed(seed, i)`: the shards of any world size, merged,
    are the whole evaluation's per-image scores, and summarise to its figures."""
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17)
    images = torch.randint(0, 17, (23, 1, 8, 8), dtype=torch.uint8)
    model.initialize(images)
    scores = score_images(model, images, batch_size=4, seed=5, iw_samples=2)
    whole = evaluate(model, images, batch_size=4, seed=5, iw_samples=2)
    assert whole == summarize(scores, iw_samples=2)
    for world_size in (2, 3, 7):
        parts = [score_images(model, images, 4, 5, 2, (r, world_size)) for r in range(world_size)]
        for rank, part in enumerate(parts):  # rank r scores the batches i ≡ r (mod world)
            assert bool((part.index // 4 % world_size == rank).all())
        merged = merge_scores(parts[::-1])
        assert merged.predicted is None and merged.bpd_marginal is None  # unconditional
        for name in ("index", "bpd", "roundtrip_error", "roundtrip_failed"):
            assert torch.equal(getattr(merged, name), getattr(scores, name)), name
    empty = score_images(model, images, 4, 5, shard=(6, 7))  # 6 batches: rank 6 has none
    assert len(empty.index) == 0 and math.isnan(summarize(empty)["bpd"])
    # The first batch's noise is the same for any batch size: seed `batch_seed(seed, 0)`.
    first = evaluate(model, images[:4], batch_size=4, seed=5)
    assert first == evaluate(model, images[:4], batch_size=8, seed=5)
    assert evaluate(model, images, batch_size=4, seed=6)["bpd"] != whole["bpd"]


def test_evaluate_counts_float32_failures_and_rechecks_them_in_float64() -> None:
    """A paper-form Glow whose first-level couplings contract by sigmoid(−12) ≈ 6e-6 each:
    float32's rounding, amplified by the inverse, breaks every round trip; float64 does not."""
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=2, hidden_channels=8, num_levels=17, min_scale=0.0)
    images = torch.randint(0, 17, (12, 1, 8, 8), dtype=torch.uint8)
    model.initialize(images)
    assert evaluate(model, images, batch_size=5)["roundtrip_failures_float32"] == 0
    with torch.no_grad():
        for name, module in model.flow.named_modules():
            if isinstance(module, ZeroConv2d) and name.startswith("layers.1.layers.1."):
                module.conv.bias.fill_(-14.0)  # h = −14: s = sigmoid(h + 2)
    result = evaluate(model, images, batch_size=5)
    assert result["roundtrip_failures_float32"] == 12 and result["recon_max_abs"] > 0.5
    assert result["roundtrip_failures"] == 0  # the float64 re-check
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


def test_evaluate_checks_the_round_trip_at_the_likelihoods_own_points(monkeypatch) -> None:
    """One forward pass per batch and draw (no separate encode), one inverse per batch; the
    float64 re-check runs only where float32 fails."""
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17)
    images = torch.randint(0, 17, (12, 1, 8, 8), dtype=torch.uint8)
    model.initialize(images)
    calls = {"forward": 0, "inverse": 0}
    forward, inverse = model.flow.forward, model.flow.inverse

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(model.flow, "forward", counted("forward", forward))
    monkeypatch.setattr(model.flow, "inverse", counted("inverse", inverse))
    result = evaluate(model, images, batch_size=5, iw_samples=2)
    assert calls == {"forward": 6, "inverse": 3}  # 3 batches x 2 draws; 3 inverses
    assert result["roundtrip_failures"] == result["roundtrip_failures_float32"] == 0
    assert 0 < result["recon_max_abs"] < 1e-3


def test_a_float64_model_is_its_own_exact_check() -> None:
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17).double()
    images = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)
    model.initialize(images)
    result = evaluate(model, images)
    assert result["roundtrip_failures"] == result["roundtrip_failures_float32"] == 0
    assert result["recon_max_abs"] < 1e-9
