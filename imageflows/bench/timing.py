"""Clocks and devices shared by the benchmarks: timed repeats after warm-up (DESIGN §5)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch

from imageflows.hardware import cpu_model


def time_calls(
    fn: Callable[[], object], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work: CUDA kernels run asynchronously, so without this the
    clock stops before the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_device(device: str) -> torch.device:
    """`device` as a `torch.device`, refusing CUDA where there is none."""
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device_


def describe_device(device: torch.device) -> str:
    """The device in words, e.g. `cuda (NVIDIA H200)` or `cpu (AMD EPYC, x86_64)`."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    architecture = platform.processor() or platform.machine()
    model = cpu_model()
    return f"cpu ({model}, {architecture})" if model else f"cpu ({architecture})"
