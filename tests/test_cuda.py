"""Checks that need a CUDA GPU: CPU/GPU agreement, exact GPU round trips, bf16 autocast on the
GPU, `imageflows bench --device cuda` and `imageflows train` on the GPU.

Marked `cuda` and deselected by default (`addopts` in pyproject.toml), so CPU CI never runs
them; `python -m pytest -m cuda tests/test_cuda.py` selects them, and without CUDA each one
skips with the reason "needs CUDA". `scripts/gpu-recipe.sh` runs them with a JUnit XML.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from imageflows.cli import main as cli_main
from imageflows.models import FlowModel, build_model, preset_config
from imageflows.runs import evaluate_run
from imageflows.train import load
from imageflows.train.step import make_optimizer, train_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

REPO = Path(__file__).resolve().parents[1]
CUDA = "cuda"

# Tiny versions of both papers' CIFAR-10 presets on 3x8x8 images with 256 levels.
TINY_GLOW = ["model.image_shape=3,8,8", "model.levels=2", "model.depth=2",
             "model.hidden_channels=16"]  # fmt: skip
TINY_FLOWPP = ["model.image_shape=3,8,8", "model.hidden_channels=16", "model.blocks=1",
               "model.heads=2", "model.components=4", "model.dequant_blocks=1",
               "model.dequant_context_channels=8", "model.dropout=0.0"]  # fmt: skip
TINY = {"glow": ("glow-cifar10", TINY_GLOW), "flowpp": ("flowpp-cifar10", TINY_FLOWPP)}

# float32 log p(x) on CUDA (TF32 off) against the CPU: at most this many bits/dim per image
# apart, i.e. 1e-4 · D · ln 2 nats (0.013 nats for D = 192). Rounding alone gives ~1e-6.
BPD_TOLERANCE = 1e-4


def tiny_model(kind: str, dtype: torch.dtype = torch.float32) -> tuple[FlowModel, Tensor]:
    """A tiny `kind` ("glow" | "flowpp") model, initialised on the CPU on a seeded uint8
    batch of 8 images 3x8x8, in `dtype`, and that batch."""
    preset, overrides = TINY[kind]
    torch.manual_seed(0)
    model = build_model(preset_config(preset).with_overrides(overrides).model).to(dtype)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 8, 8), generator=generator, dtype=torch.uint8)
    model.initialize(x)
    return model, x


@contextlib.contextmanager
def cpu_noise(seed: int = 0) -> Iterator[None]:
    """Every `torch.rand`/`torch.randn` in the block (the dequantization noise) drawn on the
    CPU from one generator seeded `seed`, then moved to the asked device: the same noise on
    every device."""
    rand, randn = torch.rand, torch.randn
    cpu = torch.Generator().manual_seed(seed)

    def on_cpu(draw: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapped(*size, generator=None, device=None, dtype=None, **kwargs) -> Tensor:
            return draw(*size, generator=cpu, dtype=dtype, **kwargs).to(device)

        return wrapped

    torch.rand, torch.randn = on_cpu(rand), on_cpu(randn)
    try:
        yield
    finally:
        torch.rand, torch.randn = rand, randn


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matrix products on CUDA (TF32 rounds to 10 mantissa
    bits, which alone moves log p(x) by more than the tolerance)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def log_prob_on(model: FlowModel, x: Tensor, device: str) -> Tensor:
    """log p(x) `[B]` (eval mode, the CPU-drawn noise of `cpu_noise`) computed on `device`."""
    model = copy.deepcopy(model).to(device).eval()
    with torch.no_grad(), cpu_noise(), no_tf32():
        return model.log_prob(x.to(device)).cpu()


def agreement(kind: str, device: str) -> None:
    model, x = tiny_model(kind)
    reference, other = log_prob_on(model, x, "cpu"), log_prob_on(model, x, device)
    assert reference.dtype == other.dtype == torch.float32
    assert torch.isfinite(reference).all() and torch.isfinite(other).all()
    bpd_gap = (other - reference).abs() / (model.num_dims * math.log(2))
    assert bpd_gap.max() <= BPD_TOLERANCE, f"{kind}: {bpd_gap.max():.3g} bits/dim apart"


def test_tiny_glow_log_prob_on_cuda_matches_cpu() -> None:
    agreement("glow", CUDA)


def test_tiny_flowpp_log_prob_on_cuda_matches_cpu() -> None:
    agreement("flowpp", CUDA)


def exact_round_trip(kind: str, device: str) -> None:
    model, x = tiny_model(kind, torch.float64)
    model = model.to(device).eval()
    images = torch.cat([x, torch.zeros_like(x[:2]), torch.full_like(x[:2], 255)]).to(device)
    eps = model.encode(images)
    assert eps.device.type == torch.device(device).type and eps.dtype == torch.float64
    decoded = model.decode(eps)
    assert decoded.dtype == torch.uint8
    assert torch.equal(decoded, images), f"{kind}: max error {(decoded - images).abs().max()}"


def test_tiny_glow_round_trip_is_exact_on_cuda_in_float64() -> None:
    exact_round_trip("glow", CUDA)


def test_tiny_flowpp_round_trip_is_exact_on_cuda_in_float64() -> None:
    exact_round_trip("flowpp", CUDA)


class ConvOutputDtypes(TorchFunctionMode):
    """Records the dtypes of every `F.conv2d` output (the conditioners' convolutions) inside
    the block."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.conv2d:
            self.dtypes.add(out.dtype)
        return out


def bf16_step(kind: str, device: str) -> None:
    model, x = tiny_model(kind)
    model = model.to(device)
    x = x.to(device)
    optimizer = make_optimizer(model, 1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    with ConvOutputDtypes() as conv_outputs:
        result = train_step(model, optimizer, x, precision="bf16", grad_clip=50.0)
    assert torch.bfloat16 in conv_outputs.dtypes, f"{kind}: no conditioner ran in bf16"
    assert result.bpd is not None and math.isfinite(result.bpd), f"{kind}: loss {result.bpd}"
    assert math.isfinite(result.grad_norm) and result.grad_norm > 0
    after = list(model.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, after, strict=True)]
    # Adam moves every parameter whose gradient is not zero by about the learning rate; the
    # zero-initialised last convolutions leave the layers before them without a gradient
    pushed = [p.grad is not None and bool(p.grad.ne(0).any()) for p in after]
    assert any(moved) and moved == pushed, f"{kind}: {sum(moved)} moved, {sum(pushed)} pushed"


def test_bf16_autocast_training_step_on_cuda_tiny_glow() -> None:
    bf16_step("glow", CUDA)


def test_bf16_autocast_training_step_on_cuda_tiny_flowpp() -> None:
    bf16_step("flowpp", CUDA)


def _subprocess_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def bench_json(device: str) -> dict:
    command = [
        sys.executable, "-m", "imageflows", "bench", "--preset", "glow-cifar10",
        "--set", "model.depth=2", "--set", "model.hidden_channels=32", "--batch-size", "8",
        "--repeats", "2", "--warmup", "1", "--sample-n", "4", "--device", device, "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=_subprocess_env(), cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bench_on_cuda_reports_peak_cuda_memory() -> None:
    result = bench_json(CUDA)
    assert result["device"].startswith("cuda")
    assert result["peak_cuda_mib"] > 0
    assert result["train_images_per_s"] > 0 and result["sample_seconds"] > 0


def _allocations() -> int:
    return torch.cuda.memory_stats().get("allocation.all.allocated", 0)


def test_train_on_cuda_writes_a_run_that_loads_on_cpu(tmp_path: Path) -> None:
    run = tmp_path / "run"
    before = _allocations()
    status = cli_main([
        "train", "--preset", "glow-digits", "--out", str(run), "--no-progress", "--json",
        "--set", "train.steps=6", "--set", "train.eval_every=3", "--set", "train.log_every=1",
        "--set", "train.checkpoint_every=3", "--set", "train.batch_size=32",
        "--set", "train.init_batch_size=64", "--set", "model.depth=2",
        "--set", "model.hidden_channels=16",
    ])  # fmt: skip
    assert status == 0
    assert _allocations() > before, "imageflows train allocated nothing on the GPU"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "train_bpd" in r]
    tests = [r for r in records if "test_bpd" in r]
    assert [r["step"] for r in trained] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["train_bpd"]) and r["images_per_s"] > 0 for r in trained)
    assert [r["step"] for r in tests] == [3, 6]

    model = load(run)  # a CPU process's view: weights land on the CPU
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    scores = evaluate_run(run)  # `imageflows eval` computes on the GPU, like training
    assert scores["device"].startswith("cuda") and scores["processes"] == 1
    assert scores["step"] == 6 and scores["roundtrip_failures"] == 0
    # training's evaluation of the same EMA weights, in batches of its own size: close
    assert abs(scores["bpd"] - tests[-1]["test_bpd"]) < 0.05
