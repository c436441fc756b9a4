"""`freeze`: an inference copy with parameter-derived kernels computed once, same outputs."""

from __future__ import annotations

import pytest
import torch

import imageflows as imf
from imageflows.models import freeze


def randomised(model: imf.FlowModel) -> imf.FlowModel:
    x = torch.randint(0, 256, (8, *model.image_shape), dtype=torch.uint8)
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


MODELS = {
    "glow": lambda: imf.Glow(image_shape=(3, 8, 8), levels=2, depth=2, hidden_channels=8),
    "flowpp": lambda: imf.FlowPlusPlus(
        image_shape=(1, 8, 8), layout="2cb,sq,2ch", hidden_channels=8, blocks=1, components=4
    ),
}


@pytest.mark.parametrize("name", MODELS)
def test_frozen_copy_gives_the_same_bits(name: str) -> None:
    torch.manual_seed(0)
    model = randomised(MODELS[name]())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze(model)
    x = torch.randint(0, 256, (4, *model.image_shape), dtype=torch.uint8)
    assert torch.equal(frozen.encode(x), model.encode(x))
    eps = torch.randn(4, *model.image_shape)
    assert torch.equal(frozen.decode(eps), model.decode(eps))
    seeded = [m.sample(3, 0.7, torch.Generator().manual_seed(1)) for m in (model, frozen)]
    assert torch.equal(*seeded)
    assert not any(hasattr(m, "frozen") for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
