"""`imageflows.bench`: the measurements and the `imageflows bench` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from imageflows import bench, cli
from imageflows.layers import Mixture, mixture_log_terms, mixture_params, solve_mixture_logit
from imageflows.models import build_model, preset_config

TINY = ["--preset", "glow-digits", "--set", "model.depth=1", "--set", "model.hidden_channels=8"]


class _Toy(nn.Module):
    """log_prob = sum((h W1 W2)^2) with h = x as float, whose forward saves h (for W1's
    gradient), g = h W1 and W2 (for g's gradient), and z = g W2 twice (for z * z)."""

    num_dims = 6

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(self.num_dims, 10))
        self.w2 = nn.Parameter(torch.randn(10, 3))

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = x.float().flatten(1) @ self.w1 @ self.w2
        return (z * z).sum(-1)


def test_saved_for_backward_counts_each_storage_once_and_skips_parameters() -> None:
    x = torch.randint(0, 4, (5, 1, 2, 3), dtype=torch.uint8)
    # float32 h [5, 6], g [5, 10] and z [5, 3] once; the parameter W2 is not counted.
    assert bench.saved_for_backward_bytes(_Toy(), x) == 4 * 5 * (6 + 10 + 3)


def test_measurements_on_a_tiny_glow() -> None:
    model_cfg = preset_config("glow-digits").with_overrides(["model.depth=1"]).model
    model = build_model(model_cfg)
    x = torch.randint(0, model.num_levels, (8, *model.image_shape), dtype=torch.uint8)
    model.initialize(x)
    small = bench.saved_for_backward_bytes(model, x[:4])
    large = bench.saved_for_backward_bytes(model, x)
    assert 0 < small < large  # activations grow with the batch
    assert bench.roundtrip_max_abs(model, x) == 0
    optimizer = torch.optim.Adam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    first, seconds = bench.time_train_step(model, optimizer, x, repeats=2, warmup=1)
    assert first > 0 and len(seconds) == 2 and all(s > 0 for s in seconds)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(bench.time_sampling(model, 3, repeats=2, warmup=0)) == 2


def test_bench_command_json(capsys) -> None:
    threads = torch.get_num_threads()
    argv = ["bench", *TINY, "--batch-size", "4", "--repeats", "2", "--warmup", "1"]
    assert cli.main([*argv, "--sample-n", "2", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert torch.get_num_threads() == threads  # restored after the measurement
    assert result["preset"] == "glow-digits" and result["model"]["depth"] == 1
    assert result["threads"] == 1 and result["batch_size"] == 4 and result["device"]
    train = preset_config("glow-digits").train
    assert result["lr"] == train.lr / train.warmup_steps  # training's first learning rate
    for key in (
        "parameters",
        "train_images_per_s",
        "train_step_seconds",
        "peak_rss_mib",
        "saved_for_backward_mib",
        "sample_seconds",
        "eval_seconds",
        "likelihood_seconds",
    ):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["train_images_per_s"] == 4 / result["train_step_seconds"]
    assert result["roundtrip_max_abs"] == 0


def test_bench_image_shape_and_table(capsys) -> None:
    argv = ["bench", *TINY, "--image-shape", "3,4,4", "--batch-size", "2", "--repeats", "1"]
    assert cli.main([*argv, "--warmup", "0", "--sample-n", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # human output goes to stderr
    assert "2 images of 3x4x4" in captured.err and "saved for backward" in captured.err
    assert "x its likelihood pass" in captured.err


def test_bench_rejects_bad_input(capsys) -> None:
    assert cli.main(["bench", *TINY, "--repeats", "0"]) == 2
    assert "repeats" in capsys.readouterr().err
    assert cli.main(["bench", *TINY, "--image-shape", "3,4"]) == 2
    assert "model.image_shape" in capsys.readouterr().err


def test_mixture_inverse_problem_has_bulk_and_tails() -> None:
    x, params, tails = bench.mixture_inverse_problem(4000, 4, tail_fraction=0.25, seed=1)
    assert x.shape == (4000,) and params.shape == (4000, 3 * 4 + 2)
    assert x.dtype == params.dtype == torch.float32
    assert 0.2 < tails.float().mean() < 0.3  # the constructed tails, plus a few bulk extremes
    again = bench.mixture_inverse_problem(4000, 4, tail_fraction=0.25, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((x, params, tails), again, strict=True))


def test_mixture_inverse_command(capsys) -> None:
    # one thread: OpenMP's spinning threads crawl on small tensors when the cores are shared
    argv = ["bench", "--mixture-inverse", "--threads", "1", "--elements", "3000"]
    argv += ["--components", "4"]
    assert cli.main([*argv, "--repeats", "2", "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["elements"] == 3000 and result["components"] == 4 and result["repeats"] == 2
    assert result["dtype"] == "float32" and result["tail_elements"] > 0
    newton, bisection = result["newton"], result["bisection"]
    assert bisection["iterations"] == 100 and 1 <= newton["iterations"] < 100
    # Newton reaches float32 resolution everywhere; the public bisection stops at its clip of
    # the CDF to [1e-5, 1 - 1e-5], far from the tails' true points
    assert newton["max_rel_error"] < 1e-3 and newton["max_logit_error"] < 1e-3
    assert bisection["tails_max_logit_error"] > 0.4
    assert bisection["bulk_max_logit_error"] < 0.1
    assert result["speedup"] == bisection["seconds"] / newton["seconds"]
    assert cli.main([*argv[:4], "--elements", "500", "--repeats", "1", "--warmup", "0"]) == 0
    table = capsys.readouterr().err
    assert "Newton (ours)" in table and "bisection" in table and "500 elements" in table


def test_mixture_inverse_rejects_model_options(capsys) -> None:
    assert cli.main(["bench", "--mixture-inverse", "--preset", "flowpp-mnist"]) == 2
    assert "--mixture-inverse measures no model; drop --preset" in capsys.readouterr().err
    assert cli.main(["bench", "--mixture-inverse", "--elements", "0"]) == 2
    assert "elements" in capsys.readouterr().err


def test_compiled_training_step_matches_eager(aot_eager_compile: list) -> None:
    """`train.compile` traces the whole training step (dynamo + AOT autograd)."""
    graphs = aot_eager_compile
    model_cfg = preset_config("glow-digits").with_overrides(["model.depth=1"]).model
    torch.manual_seed(0)
    model = build_model(model_cfg)
    x = torch.randint(0, model.num_levels, (8, *model.image_shape), dtype=torch.uint8)
    model.initialize(x)
    states = []
    for compiled in (False, True):
        trained = build_model(model_cfg)
        trained.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3)
        torch.manual_seed(1)  # the same dequantization noise
        bench.time_train_step(trained, optimizer, x, 1, 1, compile=compiled)
        states.append(trained.state_dict())
        assert bool(graphs) == compiled
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-4, atol=1e-6)


def test_bench_times_the_training_step_that_train_runs() -> None:
    from imageflows.bench import training
    from imageflows.train import loop, step

    assert training.train_step is loop.train_step is step.train_step


@pytest.mark.parametrize("method", ["newton", "bisection"])
def test_mixture_inverse_stats_reports_the_round_trip(method: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, generator=g, dtype=torch.float64)
    params = torch.randn(200, 3 * 4 + 2, generator=g, dtype=torch.float64)
    stats = bench.mixture_inverse_stats(x, params, 4, method=method)
    assert set(stats) == {
        "method",
        "iterations",
        "seconds",
        "max_abs_error",
        "max_rel_error",
        "max_logit_error",
    }
    assert stats["method"] == method and stats["seconds"] >= 0
    if method == "newton":
        assert 1 <= stats["iterations"] < 100
        assert stats["max_rel_error"] < 1e-10 and stats["max_logit_error"] < 1e-12
    else:
        assert stats["iterations"] == 100
    with pytest.raises(ValueError, match="unknown inverse method"):
        bench.mixture_inverse_stats(x, params, 4, method="secant")


def test_bisection_reference_agrees_in_the_bulk_and_clips_the_tails() -> None:
    x, params, tails = bench.mixture_inverse_problem(2000, 4, tail_fraction=0.2, seed=2)
    x, params = x.double(), params.double()
    _, _, m = mixture_params(params, 4)
    log_cdf, log_sf, _ = mixture_log_terms(x, m)
    v = log_cdf - log_sf
    newton, _ = solve_mixture_logit(v, m)
    bisection = bench.bisect_mixture_cdf(v, m)
    torch.testing.assert_close(bisection[~tails], newton[~tails], rtol=1e-8, atol=1e-8)
    # in the tails the reference stops at the clipped CDF, |logit| = ln(1e5 − 1)
    log_cdf, log_sf, _ = mixture_log_terms(bisection[tails], Mixture(*(t[tails] for t in m)))
    clipped = (log_cdf - log_sf).abs()
    torch.testing.assert_close(clipped, torch.full_like(clipped, bench.mixture.CLIP_LOGIT))
