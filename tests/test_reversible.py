"""Memory saving: back-propagation through inverses gives autograd's gradients (issue 6)."""

from __future__ import annotations

import pytest
import torch

import imageflows as imf
from imageflows.layers import Reversible

from .test_glow import random_images


def saved_bytes(fn) -> int:
    """Bytes saved for backward by one call, each storage once, parameters excluded."""
    params = set()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def _pair(
    depth: int, dtype=torch.float64, permutation: str = "conv1x1_lu"
) -> tuple[imf.Glow, imf.Glow, torch.Tensor]:
    torch.manual_seed(0)
    options = dict(
        image_shape=(2, 8, 8),
        levels=2,
        depth=depth,
        hidden_channels=8,
        num_levels=16,
        permutation=permutation,
    )
    plain = imf.Glow(**options).to(dtype)
    x = random_images(plain, n=8)
    plain.initialize(x)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    saving = imf.Glow(**options, memory_saving=True).to(dtype)
    saving.load_state_dict(plain.state_dict())
    return plain, saving, x


@pytest.mark.parametrize("permutation", ["conv1x1_lu", "reverse"])
def test_gradients_equal_ordinary_autograd(permutation: str) -> None:
    plain, saving, x = _pair(depth=3, permutation=permutation)
    for model in (plain, saving):
        loss = -model.log_prob(x, generator=torch.Generator().manual_seed(0)).mean()
        loss.backward()
    assert any(isinstance(m, Reversible) for m in saving.modules())
    for (name, p), q in zip(plain.named_parameters(), saving.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_same_log_prob_and_round_trip() -> None:
    plain, saving, x = _pair(depth=2, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    lp_plain = plain.log_prob(x, generator=g)
    lp_saving = saving.log_prob(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lp_saving, lp_plain)
    assert torch.equal(saving.decode(saving.encode(x)), x)


def test_saved_activations_do_not_grow_with_depth() -> None:
    sizes = {}
    for memory_saving in (False, True):
        for depth in (2, 8):
            torch.manual_seed(0)
            model = imf.Glow((2, 8, 8), 2, depth, 8, num_levels=16, memory_saving=memory_saving)
            x = random_images(model, n=4)
            sizes[memory_saving, depth] = saved_bytes(lambda m=model, x=x: m.log_prob(x).sum())
    assert sizes[False, 8] > 3 * sizes[False, 2]
    assert sizes[True, 8] == sizes[True, 2]
    assert sizes[True, 8] < sizes[False, 8] / 4
