"""Speed and memory of one model configuration: the one entry point for measuring (DESIGN §5).

`run_bench` builds a model from a config, initialises it on random uint8 images and reports the
whole training step's throughput (forward, backward, Adam step; median of repeats after warm-up),
peak memory, the bytes one training forward saves for backward, sampling time and the exactness
of `decode(encode(x))`. Peak RSS is a per-process high-water mark: measure one configuration per
process (one `imageflows bench` invocation each) with nothing else running.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from imageflows.config import Config
from imageflows.metrics import bits_per_dim
from imageflows.models import build_model


def training_loss(model: nn.Module, x: Tensor) -> Tensor:
    """Mean bits/dim of a uint8 batch `x` [B, C, H, W]: the training objective."""
    return bits_per_dim(model.log_prob(x), model.num_dims).mean()


def time_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    repeats: int = 10,
    warmup: int = 3,
) -> list[float]:
    """Seconds of each of `repeats` whole training steps on `x`, after `warmup` untimed ones."""
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        training_loss(model, x).backward()
        optimizer.step()

    return _time(step, repeats, warmup, x.device)


def saved_for_backward_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes that one training forward on `x` saves for backward, parameters excluded.

    Counts each storage once (by its address), so views and tensors saved by several ops are
    not double-counted; memory kept outside autograd's saved-tensor hooks is not seen.
    """
    model.train()
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    # The graph keeps every packed tensor alive until `loss` is dropped, so no address is
    # reused by a later allocation while counting.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = training_loss(model, x)
    del loss
    return sum(saved.values())


def time_sampling(
    model: nn.Module, n: int, temperature: float = 1.0, repeats: int = 10, warmup: int = 3
) -> list[float]:
    """Seconds of each of `repeats` calls of `model.sample(n, temperature)` after `warmup`."""
    model.eval()
    generator = torch.Generator(device=_device_of(model)).manual_seed(0)
    with torch.no_grad():
        return _time(
            lambda: model.sample(n, temperature, generator=generator),
            repeats,
            warmup,
            _device_of(model),
        )


def roundtrip_max_abs(model: nn.Module, x: Tensor) -> int:
    """Largest |x - decode(encode(x))| over the uint8 batch `x`; 0 when the flow is exact."""
    model.eval()
    with torch.no_grad():
        return int((model.decode(model.encode(x)).long() - x.long()).abs().max())


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_bench(
    cfg: Config,
    batch_size: int = 16,
    repeats: int = 10,
    warmup: int = 3,
    sample_n: int = 16,
    threads: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure the model of `cfg.model` trained with Adam on random images.

    Adam runs at training's first learning rate (`cfg.train.lr` / `cfg.train.warmup_steps`), so
    `roundtrip_max_abs` describes a model state that training passes through.

    Returns a JSON-ready dict: `train_images_per_s` and `train_step_seconds` (median over
    `repeats`), `peak_rss_mib` (after the training steps), `peak_cuda_mib` (CUDA only),
    `saved_for_backward_mib`, `sample_seconds` (median time to sample `sample_n` images at
    T=1), `roundtrip_max_abs`, plus the device, torch version, threads and configuration.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or sample_n < 1 or threads < 1:
        raise ValueError(
            "bench needs batch_size, repeats, sample_n, threads >= 1 and warmup >= 0, got "
            f"{batch_size}, {repeats}, {sample_n}, {threads} and {warmup}"
        )
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = build_model(cfg.model).to(device_)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randint(
            0, model.num_levels, (batch_size, *model.image_shape), generator=generator
        ).to(device_, torch.uint8)
        model.initialize(x)
        # Training's first learning rate (the start of the warm-up): one Adam step moves every
        # weight by about lr, and at the full lr a paper-size Glow can leave the finite range.
        lr = cfg.train.lr * min(1.0, 1.0 / max(cfg.train.warmup_steps, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        step_seconds = statistics.median(time_train_step(model, optimizer, x, repeats, warmup))
        result: dict[str, Any] = {
            "device": _describe(device_),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": cfg.to_dict()["model"],
            "batch_size": batch_size,
            "lr": lr,
            "repeats": repeats,
            "warmup": warmup,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_images_per_s": batch_size / step_seconds,
            "train_step_seconds": step_seconds,
            "peak_rss_mib": peak_rss_mib(),
        }
        if device_.type == "cuda":
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device_) / 2**20
        result["saved_for_backward_mib"] = saved_for_backward_bytes(model, x) / 2**20
        optimizer.zero_grad(set_to_none=True)
        result["sample_n"] = sample_n
        result["sample_seconds"] = statistics.median(
            time_sampling(model, sample_n, 1.0, repeats, warmup)
        )
        result["roundtrip_max_abs"] = roundtrip_max_abs(model, x)
        return result
    finally:
        torch.set_num_threads(previous_threads)


def format_table(result: dict[str, Any]) -> str:
    """A readable two-column table of a `run_bench` result."""
    shape = "x".join(str(s) for s in result["model"]["image_shape"])
    rows = [
        ("device", f"{result['device']}, torch {result['torch']}, {result['threads']} threads"),
        ("model", describe_model(result["model"])),
        ("batch", f"{result['batch_size']} images of {shape}"),
        ("parameters", f"{result['parameters']:,}"),
        (
            "train step",
            f"{result['train_step_seconds']:.4g} s = {result['train_images_per_s']:.4g} "
            f"images/s (median of {result['repeats']} after {result['warmup']} warm-up)",
        ),
        ("peak RSS", f"{result['peak_rss_mib']:.1f} MiB (whole process)"),
    ]
    if "peak_cuda_mib" in result:
        rows.append(("peak CUDA", f"{result['peak_cuda_mib']:.1f} MiB allocated"))
    rows += [
        ("saved for backward", f"{result['saved_for_backward_mib']:.1f} MiB per training forward"),
        ("sampling", f"{result['sample_seconds']:.4g} s for {result['sample_n']} images at T=1"),
        ("decode(encode(x))", f"max |error| {result['roundtrip_max_abs']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def describe_model(model: dict[str, Any]) -> str:
    """One line naming a model config (`Config.to_dict()["model"]`): type, size, components."""
    shape = "x".join(str(s) for s in model["image_shape"])
    size = f"L={model['levels']} K={model['depth']}" if model["type"] == "glow" else ""
    return (
        f"{model['type']} {size} {model['hidden_channels']} channels, {model['coupling']} "
        f"coupling, {model['permutation']}, {shape} with {model['num_levels']} levels"
    )


def _time(
    fn: Callable[[], object], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without this the clock stops before the work does.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"
