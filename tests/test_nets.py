"""Conditioner networks: Glow's folded conv-actnorm; Flow++'s weight norm, gated blocks,
attention, dropout, shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import imageflows.layers as L
from imageflows.nets import (
    ChannelLayerNorm,
    ContextNet,
    ConvActNorm,
    FlowppConditioner,
    GatedAttention,
    GatedConv,
    GatedPointwise,
    WNConv2d,
    ZeroConv2d,
    concat_elu,
    gate,
)
from imageflows.nets.flowpp import Dropout


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_folded_conv_actnorm_equals_conv_then_actnorm(kernel_size: int) -> None:
    torch.manual_seed(0)
    layer = ConvActNorm(3, 5, kernel_size).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    L.initialize(layer, x)
    out = layer(x)  # initialised on this batch: zero mean, unit variance per channel
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(5, dtype=torch.float64))
    std = out.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(std, torch.ones(5).double(), rtol=0, atol=1e-5)  # actnorm eps
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn(p.shape, dtype=p.dtype))
    torch.testing.assert_close(layer(x), layer.actnorm(layer.conv(x))[0])


def test_zero_conv_starts_at_zero_and_scales_its_output_by_exp_3s() -> None:
    torch.manual_seed(0)
    layer = ZeroConv2d(3, 4).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.equal(layer(x), torch.zeros(2, 4, 5, 5, dtype=torch.float64))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn(p.shape, dtype=p.dtype))
    torch.testing.assert_close(layer(x), layer.conv(x) * (3 * layer.log_scale).exp())


def test_concat_elu_and_gate() -> None:
    x = torch.tensor([[[[-1.0]], [[2.0]]]])  # (1, 2, 1, 1)
    expected = torch.tensor([math.exp(-1) - 1, 2.0, 1.0, math.exp(-2) - 1])
    torch.testing.assert_close(concat_elu(x).flatten(), expected)
    torch.testing.assert_close(gate(x).flatten(), torch.tensor([-1 / (1 + math.exp(-2))]))


def test_weight_norm_depends_only_on_the_direction_of_v() -> None:
    torch.manual_seed(0)
    conv = WNConv2d(3, 5, 3).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = conv(x)
    with torch.no_grad():
        conv.direction.mul_(7.0)
    torch.testing.assert_close(conv(x), y)
    weight = conv.direction / conv.direction.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(y, F.conv2d(x, weight, conv.bias, padding=1))


@pytest.mark.parametrize("init_scale", [1.0, 0.1])
def test_data_dependent_init_standardises_each_output_channel(init_scale: float) -> None:
    torch.manual_seed(0)
    conv = WNConv2d(3, 4, 3, init_scale=init_scale).double()
    x = 3 + 2 * torch.randn(32, 3, 5, 5, dtype=torch.float64)
    L.initialize(conv, x)
    y = conv(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64))
    std = y.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(std, torch.full((4,), init_scale, dtype=torch.float64))


def test_channel_layer_norm_normalises_each_pixel_over_channels() -> None:
    torch.manual_seed(0)
    norm = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 3, 3) * 4 + 1
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        y.var(dim=1, unbiased=False), torch.ones(2, 3, 3), atol=1e-3, rtol=0
    )


def test_attention_matches_a_naive_multi_head_implementation() -> None:
    torch.manual_seed(0)
    attn = GatedAttention(8, heads=2).double()
    x = torch.randn(2, 8, 3, 2, dtype=torch.float64)
    pos = torch.randn(1, 8, 3, 2, dtype=torch.float64)
    qkv = attn.qkv(x + pos).flatten(2).transpose(1, 2)  # (B, T, 3C)
    q, k, v = qkv.split(8, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0, dim=-1)
        heads.append(weights @ v[..., cols])
    a = torch.cat(heads, dim=-1).transpose(1, 2).reshape(2, 8, 3, 2)
    torch.testing.assert_close(attn(x, pos), x + gate(attn.out(a)))


def test_attention_mixes_all_positions_and_the_pointwise_ablation_does_not() -> None:
    torch.manual_seed(0)
    pos = torch.zeros(1, 8, 4, 4)
    x = torch.randn(1, 8, 4, 4)
    x2 = x.clone()
    x2[..., 3, 3] += 1.0  # change one far corner
    attn, pointwise = GatedAttention(8, heads=4), GatedPointwise(8)
    assert (attn(x2, pos) - attn(x, pos))[..., 0, 0].abs().max() > 0
    torch.testing.assert_close(pointwise(x2, pos)[..., 0, 0], pointwise(x, pos)[..., 0, 0])
    count = sum(p.numel() for p in attn.parameters())
    assert count == sum(p.numel() for p in pointwise.parameters())


def test_gated_conv_uses_the_conditioning_input() -> None:
    torch.manual_seed(0)
    block = GatedConv(4, cond_channels=3)
    x, cond = torch.randn(2, 4, 3, 3), torch.randn(2, 3, 3, 3)
    assert (block(x, cond) - block(x, cond + 1)).abs().max() > 0
    with pytest.raises(ValueError, match="pass cond"):
        block(x)


def conditioner(**kwargs) -> FlowppConditioner:
    options = dict(in_channels=2, out_channels=6, hidden_channels=8, blocks=2, size=(3, 4))
    return FlowppConditioner(**{**options, **kwargs})


@pytest.mark.parametrize("attention", [True, False])
def test_conditioner_shapes_and_data_dependent_init(attention: bool) -> None:
    torch.manual_seed(0)
    net = conditioner(out_channels=4, attention=attention, heads=2, cond_channels=5)
    coupling = L.Coupling(net, L.Affine(), L.CheckerboardSplit())  # initialize passes cond
    x, cond = torch.randn(16, 2, 3, 8), torch.randn(16, 5, 3, 4)
    L.initialize(coupling, x, cond)
    out = net(x[..., ::2], cond)
    assert out.shape == (16, 4, 3, 4)
    # the output layer starts at 0.1 standard deviation per channel (official init_scale)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.full((4,), 0.1))
    convs = [m for m in net.modules() if isinstance(m, WNConv2d)]
    assert all((m.gain != 1).any() for m in convs)


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    net = conditioner(dropout=0.5)
    x = torch.randn(2, 2, 3, 4)
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cpu_dropout_keeps_1_minus_p_unbiased_in_the_input_layout(p: float) -> None:
    torch.manual_seed(0)
    layer = Dropout(p).train()
    x = torch.rand(16, 32, 32, 16).add_(0.5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 262,144 draws
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))  # scaled survivors, the rest zero
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept / (1 - p))  # the same mask in backward
    torch.manual_seed(1)
    first = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), first)  # the global RNG decides, so replays reproduce it
    layer.eval()
    assert layer(x) is x


def test_conditioner_rejects_bad_configurations() -> None:
    with pytest.raises(ValueError, match="attention heads"):
        conditioner(heads=3)
    with pytest.raises(ValueError, match="blocks"):
        conditioner(blocks=0)
    with pytest.raises(ValueError, match="dropout"):
        conditioner(dropout=1.0)
    with pytest.raises(ValueError, match=r"built for \(3, 4\)"):
        conditioner()(torch.zeros(1, 2, 4, 4))


def test_context_net_shapes() -> None:
    net = ContextNet(6, 32)
    assert net(torch.randn(2, 6, 4, 3)).shape == (2, 32, 4, 3)
    assert len(net.blocks) == 3
