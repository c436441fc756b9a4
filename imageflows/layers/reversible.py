"""Backpropagation through inverses: activation memory that does not grow with depth.

RevNet (Gomez et al., NeurIPS 2017) applied to a flow: a chain of invertible layers keeps only
its output for the backward pass. The backward pass walks the chain from the top, rebuilding each
layer's input with `inverse`, re-running that one layer under autograd and back-propagating
through it, so at most one layer's activations are alive at a time.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .base import Bijection, Sequential
from .coupling import Coupling


def _leaves(layer: Bijection) -> Iterator[Bijection]:
    """The layers of nested `Sequential`s in order: the units rebuilt one at a time."""
    if isinstance(layer, Sequential):
        for child in layer.layers:
            yield from _leaves(child)
    else:
        yield layer


def _recompute(
    layer: Bijection,
    z: Tensor,
    cond: Tensor | None,
    replay: Callable[[], contextlib.AbstractContextManager],
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Rebuild `layer`'s input from its output z and re-run it under autograd.

    Returns the input as leaves to differentiate by, the input itself, and the recomputed
    output and log-det. A coupling leaves its conditioning half unchanged (x_id = z_id), so
    θ = NN(x_id) is computed once and serves both the inverse and the recomputation, as in
    RevNet: one conditioner pass instead of two. Every pass runs in `replay()`, which restores
    the forward's random state (dropout).
    """
    if isinstance(layer, Coupling):
        z_id, z_tr = layer.split(z)
        x_id = z_id.detach().requires_grad_(True)
        with replay():
            params = layer.theta(x_id, cond)
        with torch.no_grad():
            x_tr = layer.transform.inverse(z_tr, params)[0]
        x_tr.requires_grad_(True)
        return (
            [x_id, x_tr],
            layer.split.merge(x_id, x_tr),
            *layer.transform_halves(x_id, x_tr, params),
        )
    with torch.no_grad(), replay():
        x = layer.inverse(z, cond)[0]
    x.requires_grad_(True)
    with replay():
        return [x], x, *layer(x, cond)


def _has_dropout(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay_rng(
    state: tuple[Tensor, Tensor | None] | None, device: torch.device
) -> Iterator[None]:
    """Run a block with the RNG state of the forward pass (dropout masks), then restore it."""
    if state is None:
        yield
        return
    devices = [device] if state[1] is not None else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _autocast_state(device: torch.device) -> dict:
    """The autocast setting of the forward pass, as `torch.autocast` arguments.

    Backward runs outside the forward's autocast region (on another thread for CUDA), so the
    recomputation re-enters it: a conditioner must see the same precision in both passes to give
    the same output, which is what makes the coupling exactly invertible.
    """
    return {
        "device_type": device.type,
        "dtype": torch.get_autocast_dtype(device.type),
        "enabled": torch.is_autocast_enabled(device.type),
    }


class _BackpropThroughInverse(torch.autograd.Function):
    """(x, cond, *params) ↦ (z, logdet) of a `Sequential`, saving z and cond only."""

    @staticmethod
    def forward(ctx, body: Sequential, x: Tensor, cond: Tensor | None, *params: Tensor):
        ctx.body = body
        ctx.rng_states = []
        ctx.autocast = _autocast_state(x.device)
        with torch.no_grad():
            z, logdet = x, x.new_zeros(x.shape[0])
            for layer in _leaves(body):
                replay = body.training and _has_dropout(layer)
                ctx.rng_states.append(_rng_state(x.device) if replay else None)
                z, ld = layer(z, cond)
                logdet = logdet + ld
        ctx.save_for_backward(z, cond)
        return z, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor | None, grad_logdet: Tensor | None):
        z, cond = ctx.saved_tensors
        params = [p for p in ctx.body.parameters() if p.requires_grad]
        grads: dict[int, Tensor] = {}
        grad_z = torch.zeros_like(z) if grad_z is None else grad_z
        grad_logdet = z.new_zeros(z.shape[0]) if grad_logdet is None else grad_logdet
        cond_needs_grad = cond is not None and ctx.needs_input_grad[2]
        grad_cond = None
        z = z.detach()
        for layer, rng in zip(
            reversed(list(_leaves(ctx.body))), reversed(ctx.rng_states), strict=True
        ):
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                c = cond.detach().requires_grad_(True) if cond_needs_grad else cond
                replay = functools.partial(_replay_rng, rng, z.device)
                inputs, x, z_again, logdet = _recompute(layer, z, c, replay)
            wrt = [*inputs, *([c] if cond_needs_grad else []), *layer.parameters()]
            wrt = [t for t in wrt if t.requires_grad]
            # Outside autocast, like any backward pass (autocast would recast its matmuls).
            # a volume-preserving layer's log-det is a constant with no graph
            outputs = [
                (t, g) for t, g in ((z_again, grad_z), (logdet, grad_logdet)) if t.requires_grad
            ]
            got = torch.autograd.grad(
                [t for t, _ in outputs], wrt, [g for _, g in outputs], allow_unused=True
            )
            grad_inputs = [
                g if g is not None else torch.zeros_like(t)
                for t, g in zip(inputs, got, strict=False)
            ]
            grad_z = grad_inputs[0] if len(inputs) == 1 else layer.split.merge(*grad_inputs)
            for tensor, g in zip(wrt[len(inputs) :], got[len(inputs) :], strict=True):
                if g is None:
                    continue
                if tensor is c and cond_needs_grad:
                    grad_cond = g if grad_cond is None else grad_cond + g
                else:
                    grads[id(tensor)] = g if id(tensor) not in grads else grads[id(tensor)] + g
            z = x.detach()
        return (None, grad_z, grad_cond, *[grads.get(id(p)) for p in params])


class Reversible(Sequential):
    """A `Sequential` trained by back-propagating through its inverse (memory saving).

    Same map, log-det and state_dict keys as the plain chain; in training only the chain's
    output is kept for the backward pass, so activation memory is constant in the number of
    layers. Dropout masks and the autocast state are replayed from the forward pass, as
    `torch.utils.checkpoint` does.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not torch.is_grad_enabled() or not (x.requires_grad or params):
            return super().forward(x, cond)
        return _BackpropThroughInverse.apply(self, x, cond, *params)
