"""Backpropagation through inverses: activation memory that does not grow with depth.

RevNet (Gomez et al., NeurIPS 2017) applied to a flow: a chain of invertible layers keeps only
its output for the backward pass. The backward pass walks the chain from the top, rebuilding each
layer's input with `Bijection.recompute` (its inverse; a coupling's one-pass reconstruction),
re-running that one layer under autograd and back-propagating through it, so at most one layer's
activations are alive at a time. No layer class is special here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .base import Bijection, Sequential


def _leaves(layer: Bijection) -> Iterator[Bijection]:
    """The layers of nested `Sequential`s in order: the units rebuilt one at a time."""
    if isinstance(layer, Sequential):
        for child in layer.layers:
            yield from _leaves(child)
    else:
        yield layer


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
            c = cond.detach().requires_grad_(True) if cond_needs_grad else cond
            with torch.enable_grad(), torch.autocast(**ctx.autocast), _replay_rng(rng, z.device):
                rebuilt = layer.recompute(z, c)
            # outside autocast, like any backward pass; a volume-preserving layer's log-det is
            # a constant with no graph
            outputs = [
                (t, g)
                for t, g in ((rebuilt.z, grad_z), (rebuilt.logdet, grad_logdet))
                if t.requires_grad
            ]
            layer_params = [p for p in layer.parameters() if p.requires_grad]
            wrt = [rebuilt.handle, *([c] if cond_needs_grad else []), *layer_params]
            got = torch.autograd.grad(
                [t for t, _ in outputs], wrt, [g for _, g in outputs], allow_unused=True
            )
            grad_z = torch.zeros_like(rebuilt.handle) if got[0] is None else got[0]
            if cond_needs_grad and got[1] is not None:
                grad_cond = got[1] if grad_cond is None else grad_cond + got[1]
            for p, g in zip(layer_params, got[len(wrt) - len(layer_params) :], strict=True):
                if g is not None:
                    grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
            z = rebuilt.x
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
