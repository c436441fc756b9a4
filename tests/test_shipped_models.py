"""The committed runs, far from their data: exact round trips and likelihoods free of numerics.

Images no model saw: uniform noise, constant images, inverted digits, and (for the MNIST model)
scikit-learn's 8x8 digits upscaled to 28x28, another dataset of the same kind.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import imageflows as imf
from imageflows.data import load_dataset
from imageflows.layers import standard_normal_log_prob

RUNS = Path(__file__).parents[1] / "runs"


def far_images(model: imf.FlowModel) -> dict[str, torch.Tensor]:
    """Batches of images of the model's shape and levels that are not from its training data."""
    c, h, w = model.image_shape
    top = model.num_levels - 1
    g = torch.Generator().manual_seed(0)
    digits = load_dataset("digits", "test").images[:24].float() / 16  # (24, 1, 8, 8) in [0, 1]
    digits = F.interpolate(digits, size=(h, w), mode="nearest") if h != 8 else digits
    digits = (digits * top).round().to(torch.uint8).expand(-1, c, -1, -1).contiguous()
    return {
        "uniform noise": torch.randint(0, top + 1, (48, c, h, w), generator=g).to(torch.uint8),
        "constant": torch.linspace(0, top, 12).round().to(torch.uint8).view(-1, 1, 1, 1)
        .expand(-1, c, h, w).contiguous(),
        "inverted digits": top - digits,
        **({"upscaled digits": digits} if h != 8 else {}),
    }  # fmt: skip


def shipped(run: str) -> imf.FlowModel:
    if not (RUNS / run / "model.safetensors").is_file():
        pytest.skip(f"runs/{run} is not in this checkout")
    return imf.load(RUNS / run)


def some_labels(model: imf.FlowModel, n: int) -> torch.Tensor | None:
    """Every class in turn for a class-conditional model, None for an unconditional one."""
    return torch.arange(n) % model.num_classes if model.num_classes else None


SHIPPED = ["glow-digits", "glow-mnist", "glow-mnist-cond", "glow-mnist-background",
           "glow-cifar10-small", "flowpp-cifar10-small", "glow-mnist-long",
           "flowpp-mnist-long"]  # fmt: skip


@pytest.mark.parametrize("run", SHIPPED)
def test_round_trips_are_exact_far_from_the_data(run: str) -> None:
    model = shipped(run).double()  # the exact codes of `imageflows encode` / `decode`
    for name, x in far_images(model).items():
        labels = some_labels(model, len(x))
        assert torch.equal(model.decode(model.encode(x, labels), labels), x), name


@pytest.mark.parametrize("run", SHIPPED)
def test_likelihoods_far_from_the_data_are_the_models_not_rounding(run: str) -> None:
    """The flow's log-density at the same points y = (x + u)/N in float32 and in float64 agrees:
    however low (far from the data a Gaussian prior's quadratic term grows fast), it is the
    model's density, not an arithmetic blow-up."""
    model = shipped(run)
    g = torch.Generator().manual_seed(1)
    for name, x in far_images(model).items():
        y = (x.double() + torch.rand(x.shape, generator=g, dtype=torch.float64)) / model.num_levels
        labels = some_labels(model, len(x))
        per_dtype = []
        for dtype in (torch.float32, torch.float64):
            model = model.to(dtype)
            cond = model.class_cond(labels, len(x))
            with torch.no_grad():
                eps, logdet = model.flow(y.to(dtype), cond)
            log_density = standard_normal_log_prob(eps.double()) + logdet.double()
            per_dtype.append(-log_density / (model.num_dims * math.log(2)))
        bpd32, bpd64 = per_dtype
        assert torch.isfinite(bpd32).all(), name
        # float32 rounding, amplified by up to 32 contracting couplings, reaches 1.2e-4 of the
        # ~1,080 bits/dim of one noise image through glow-mnist-long at step 25,000; a blow-up
        # would be off by orders of magnitude, not by a thousandth
        torch.testing.assert_close(bpd32, bpd64, rtol=1e-3, atol=1e-4)


def small(name: str) -> imf.FlowModel:
    """Preset `name`'s architecture (its image shape, levels, couplings, permutations, layout and
    dequantizer) at a test's width and depth, initialised on noise, then every parameter moved
    at random so that no coupling is the identity its zero-initialised last layer starts as."""
    model = imf.preset_config(name).model
    keys = ["model.hidden_channels=8", "model.dequant_couplings=2", "model.dequant_blocks=1"]
    keys += ["model.dequant_context_channels=8"]
    keys += ["model.depth=2"] if model.type == "glow" else ["model.blocks=1"]
    cfg = imf.preset_config(name).with_overrides(keys)
    torch.manual_seed(0)
    model = imf.build_model(cfg.model).double()
    c, h, w = model.image_shape
    model.initialize(torch.randint(0, model.num_levels, (8, c, h, w), dtype=torch.uint8))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("name", sorted(imf.PRESETS))
def test_every_presets_architecture_round_trips_any_image_in_float64(name: str) -> None:
    model = small(name)
    for kind, x in far_images(model).items():
        x = x[:6]
        assert torch.equal(model.decode(model.encode(x)), x), kind
        assert torch.isfinite(model.log_prob(x)).all(), kind
