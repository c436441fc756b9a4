"""Memory saving: back-propagation through inverses gives autograd's gradients (issue 6)."""

from __future__ import annotations

import copy

import pytest
import torch

import imageflows as imf
import imageflows.layers as L
from imageflows.layers import Reversible

from .bijection_cases import flowpp_step, normal
from .test_glow import random_images


@pytest.mark.parametrize("dropout,cond_channels", [(0.0, 0), (0.3, 0), (0.3, 2)])
def test_reversible_equals_sequential(dropout: float, cond_channels: int) -> None:
    """The same outputs, log-dets and gradients (input, cond, every parameter) as the plain
    chain, with dropout in training mode (the backward pass replays the forward's masks)."""
    torch.manual_seed(0)
    shape = (2, 2, 4)
    layers = [
        *flowpp_step(shape, L.MixtureCDF(2), dropout, cond_channels).layers,
        *flowpp_step(shape, L.Affine(), dropout, cond_channels).layers,
        L.InvConv1x1LU(2),
    ]
    plain = L.Sequential(layers).double()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.3 * torch.randn_like(p))
    saving = Reversible(copy.deepcopy(list(plain.layers)))
    g = torch.Generator().manual_seed(1)
    x = normal((3, *shape), g)
    cond = normal((3, cond_channels, 2, 2), g) if cond_channels else None
    weights = normal((3, *shape), g), normal((3,), g)
    results = []
    for chain in (plain, saving):
        x_in = x.clone().requires_grad_(True)
        c = None if cond is None else cond.clone().requires_grad_(True)
        torch.manual_seed(5)  # the same dropout masks in both forward passes
        z, logdet = chain(x_in, c)
        ((z * weights[0]).sum() + (logdet * weights[1]).sum()).backward()
        grads = [x_in.grad, *([] if c is None else [c.grad])]
        results.append((z, logdet, grads, [p.grad for p in chain.parameters()]))
    (z, logdet, grads, param_grads), (z_s, logdet_s, grads_s, param_grads_s) = results
    torch.testing.assert_close(z_s, z, rtol=0, atol=0)
    torch.testing.assert_close(logdet_s, logdet, rtol=0, atol=0)
    for ours, expected in zip(grads_s + param_grads_s, grads + param_grads, strict=True):
        assert ours is not None
        torch.testing.assert_close(ours, expected)


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
