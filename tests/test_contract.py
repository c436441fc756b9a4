"""The bijection contract (DESIGN sections 2 and 9), run in float64 over every registry case."""

from __future__ import annotations

import inspect

import pytest
import torch

import imageflows.layers as L
import imageflows.models as models

from .bijection_cases import (
    CALL_SEED,
    CASES,
    Case,
    brute_force_logdet,
    call,
    make_cond,
    make_inputs,
    make_layer,
    normal,
)


def _rows(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if t is None else t[i : i + 1]


def check_shapes_and_round_trips(case: Case, layer: L.Bijection) -> None:
    """Finite `[B]` log-dets; inverse ∘ forward and forward ∘ inverse are the identity; the
    inverse's log-det is minus the forward's at the same point."""
    x, cond = make_inputs(case), make_cond(case, 3)
    z, ld = call(layer, x, cond)
    assert z.dtype == x.dtype and ld.shape == (x.shape[0],) and torch.isfinite(ld).all()
    assert z.numel() == x.numel() and z.shape[0] == x.shape[0]
    x_back, ld_inv = call(layer.inverse, z, cond)
    tol = dict(atol=case.tol, rtol=case.tol)
    torch.testing.assert_close(x_back, x, **tol)
    torch.testing.assert_close(ld_inv, -ld, **tol)
    z2 = case.z(tuple(z.shape), torch.Generator().manual_seed(2))
    x2, ld2_inv = call(layer.inverse, z2, cond)
    assert x2.shape == x.shape and torch.isfinite(ld2_inv).all()
    z2_back, ld2 = call(layer, x2, cond)
    torch.testing.assert_close(z2_back, z2, **tol)
    torch.testing.assert_close(ld2, -ld2_inv, **tol)
    if case.train:  # the same seed, the same masks; another seed, other masks (dropout is on)
        for fn, v in ((layer, x), (layer.inverse, z)):
            out, ld_v = call(fn, v, cond)
            again = call(fn, v, cond)
            assert torch.equal(again[0], out) and torch.equal(again[1], ld_v)
            torch.manual_seed(CALL_SEED + 1)
            assert not torch.equal(fn(v, cond)[0], out)


def check_logdet_against_brute_force(case: Case, layer: L.Bijection) -> None:
    """Both directions' log-dets are log|det J| of the autograd Jacobian (one example at a time,
    so that a training-mode layer draws the same dropout masks for both)."""
    x, cond = make_inputs(case, batch=2), make_cond(case, 2)
    z = call(layer, x, cond)[0]
    for fn, v in ((layer, x), (layer.inverse, z)):
        for i in range(len(v)):
            v_i, cond_i = v[i : i + 1], _rows(cond, i)
            ld = call(fn, v_i, cond_i)[1]

            def out(u: torch.Tensor, fn=fn, cond_i=cond_i) -> torch.Tensor:
                return call(fn, u, cond_i)[0]

            torch.testing.assert_close(ld, brute_force_logdet(out, v_i))


def check_examples_are_independent(case: Case, layer: L.Bijection) -> None:
    """Each example's output and log-det do not depend on the rest of the batch (in eval mode
    for a dropout case: its masks are drawn per batch)."""
    layer.eval()
    x, cond = make_inputs(case, batch=4), make_cond(case, 4)
    z, ld = layer(x, cond)
    x_back, ld_inv = layer.inverse(z, cond)
    for i in range(len(x)):
        for fn, v, out, logdet in ((layer, x, z, ld), (layer.inverse, z, x_back, ld_inv)):
            out_i, ld_i = fn(v[i : i + 1], _rows(cond, i))
            torch.testing.assert_close(out_i, out[i : i + 1])
            torch.testing.assert_close(ld_i, logdet[i : i + 1])
    layer.train(case.train)


def check_gradients_and_state_dict(case: Case, layer: L.Bijection) -> None:
    """Gradients reach the input, `cond` and every parameter, in both directions; a freshly
    built layer that loads the state_dict gives identical outputs."""
    x, cond = make_inputs(case), make_cond(case, 3)
    z = call(layer, x, cond)[0].detach()
    for fn, v in ((layer, x), (layer.inverse, z)):
        v = v.clone().requires_grad_(True)
        c = None if cond is None else cond.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out, ld = call(fn, v, c)
        weights = normal(tuple(out.shape), torch.Generator().manual_seed(3))
        ((out * weights).sum() + ld.sum()).backward()
        assert v.grad is not None and v.grad.abs().sum() > 0
        assert c is None or (c.grad is not None and c.grad.abs().sum() > 0)
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (fn, name)
    torch.manual_seed(99)
    other = case.build().double().train(case.train)
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        for fn, fn_other, v in ((layer, other, x), (layer.inverse, other.inverse, z)):
            out, ld = call(fn, v, cond)
            out_other, ld_other = call(fn_other, v, cond)
            assert torch.equal(out_other, out) and torch.equal(ld_other, ld)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bijection_contract(case: Case) -> None:
    layer = make_layer(case)
    check_shapes_and_round_trips(case, layer)
    check_logdet_against_brute_force(case, layer)
    check_examples_are_independent(case, layer)
    check_gradients_and_state_dict(case, layer)


def test_registry_covers_every_public_layer() -> None:
    """Every `Bijection` (and coupling map) that `imageflows.layers` or `imageflows.models`
    exports is built by some case."""
    exported = [getattr(L, name) for name in L.__all__]
    exported += [getattr(models, name) for name in models.__all__]
    public = {
        obj
        for obj in exported
        if inspect.isclass(obj)
        and issubclass(obj, (L.Bijection, L.ElementwiseMap))
        and obj not in (L.Bijection, L.ElementwiseMap)
    }
    assert {L.Coupling, L.Reversible, models.MultiScaleFlow} <= public  # the walk finds them
    covered = {type(m) for case in CASES for m in case.build().modules()}
    missing = sorted(cls.__name__ for cls in public - covered)
    assert not missing, f"no registry case builds {missing}"


def test_registry_names_are_unique_and_cover_cond_dropout_and_tails() -> None:
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
    assert any(case.cond_channels for case in CASES)
    assert any(case.train for case in CASES)
    assert any(case.cond_channels and case.train for case in CASES)
    assert any("tails" in case.name for case in CASES)
