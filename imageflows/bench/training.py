"""Speed and memory of one model configuration: the one entry point for measuring (DESIGN §5).

`run_bench` builds a model from a config, initialises it on random uint8 images and reports the
whole training step's throughput (`imageflows.train.step.train_step`: forward, backward,
gradient clipping, Adam step; median of repeats after warm-up), peak memory, the bytes one
training forward saves for backward, sampling time and the exactness of `decode(encode(x))`.
Peak RSS is a per-process high-water mark: measure one configuration per process (one
`imageflows bench` invocation each) with nothing else running.
"""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

import torch
from torch import Tensor, nn

from imageflows.bench.timing import check_device, describe_device, time_calls
from imageflows.config import Config
from imageflows.hardware import describe_cpu_bf16
from imageflows.metrics import evaluate
from imageflows.models import FlowModel, build_model, freeze
from imageflows.train.schedule import scheduled_lr
from imageflows.train.step import batch_bpd, make_optimizer, train_step


def time_train_step(
    model: FlowModel,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    repeats: int = 10,
    warmup: int = 3,
    precision: str = "fp32",
    compile: bool = False,
    grad_clip: float = 0.0,
) -> tuple[float, list[float]]:
    """Seconds of the first training step on `x` (where `compile` compiles) and of each of
    `repeats` later ones, timed after `warmup` untimed steps (the first included).

    Each step is `train_step` as training runs it, on the same batch `x`, with dequantization
    noise from torch's global generator.
    """
    model.train()
    log_prob = torch.compile(model.log_prob) if compile else model.log_prob

    def step() -> None:
        train_step(
            model, optimizer, x, log_prob=log_prob, grad_clip=grad_clip, precision=precision
        )

    first = time_calls(step, 1, 0, x.device)[0]
    return first, time_calls(step, repeats, max(warmup - 1, 0), x.device)


def saved_for_backward_bytes(model: nn.Module, x: Tensor, precision: str = "fp32") -> int:
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
        loss = batch_bpd(model, x, precision=precision).mean()
    del loss
    return sum(saved.values())


def time_sampling(
    model: nn.Module, n: int, temperature: float = 1.0, repeats: int = 10, warmup: int = 3
) -> list[float]:
    """Seconds of each of `repeats` calls of `model.sample(n, temperature)` after `warmup`."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        return time_calls(
            lambda: model.sample(n, temperature, generator=generator), repeats, warmup, device
        )


def time_eval(
    model: FlowModel, images: Tensor, repeats: int = 10, warmup: int = 3
) -> tuple[list[float], list[float]]:
    """Seconds of `repeats` calls each of `imageflows.metrics.evaluate` on uint8 `images` (one
    batch) and of its likelihood pass alone (`model.log_prob` under no_grad, eval mode),
    alternating, after `warmup` of each."""
    model.eval()
    device = images.device

    def likelihood() -> None:
        with torch.no_grad():
            model.log_prob(images, generator=torch.Generator(device).manual_seed(0))

    def whole() -> None:
        evaluate(model, images, batch_size=len(images))

    time_calls(likelihood, 0, warmup, device)
    time_calls(whole, 0, warmup, device)
    pairs = [(time_calls(likelihood, 1, 0, device)[0], time_calls(whole, 1, 0, device)[0])
             for _ in range(repeats)]  # fmt: skip
    return [w for _, w in pairs], [lk for lk, _ in pairs]


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


def training_setup(
    cfg: Config, batch_size: int = 16, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[nn.Module, torch.optim.Optimizer, Tensor]:
    """The benchmarked model of `cfg.model`, initialised on a random uint8 batch, with Adam at
    training's first learning rate (`scheduled_lr(cfg.train, 0)`), and that batch.

    One Adam step moves every weight by about lr, and at the full lr a paper-size Glow can leave
    the finite range; so `roundtrip_max_abs` describes a state that training passes through.
    """
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(
        0, model.num_levels, (batch_size, *model.image_shape), generator=generator
    ).to(device, torch.uint8)
    model.initialize(x)
    return model, make_optimizer(model, scheduled_lr(cfg.train, 0)), x


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
    """Measure the model of `cfg.model` trained with Adam on random images (`training_setup`).

    Returns a JSON-ready dict: `train_images_per_s` and `train_step_seconds` (median over
    `repeats`), `peak_rss_mib` (after the training steps), `peak_cuda_mib` (CUDA only),
    `saved_for_backward_mib`, `sample_seconds` (median time to sample `sample_n` images at
    T=1 from the model's inference copy, `freeze`, as `imageflows sample` does),
    `roundtrip_max_abs`, `eval_seconds` and `likelihood_seconds` (medians of `time_eval` on
    the batch: `imageflows eval`'s work and its likelihood pass alone), plus the device, torch
    version, threads and configuration.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or sample_n < 1 or threads < 1:
        raise ValueError(
            "bench needs batch_size, repeats, sample_n, threads >= 1 and warmup >= 0, got "
            f"{batch_size}, {repeats}, {sample_n}, {threads} and {warmup}"
        )
    device_ = check_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, optimizer, x = training_setup(cfg, batch_size, seed, device_)
        lr, tc = optimizer.param_groups[0]["lr"], cfg.train
        first_step, steps = time_train_step(
            model, optimizer, x, repeats, warmup, tc.precision, tc.compile, tc.grad_clip
        )
        step_seconds = statistics.median(steps)
        result: dict[str, Any] = {
            "device": describe_device(device_),
            "cpu_bf16": describe_cpu_bf16(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": cfg.to_dict()["model"],
            "batch_size": batch_size,
            "precision": tc.precision,
            "compile": tc.compile,
            "lr": lr,
            "repeats": repeats,
            "warmup": warmup,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_images_per_s": batch_size / step_seconds,
            "train_step_seconds": step_seconds,
            "first_step_seconds": first_step,
            "peak_rss_mib": peak_rss_mib(),
        }
        if device_.type == "cuda":
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device_) / 2**20
        result["saved_for_backward_mib"] = saved_for_backward_bytes(model, x, tc.precision) / 2**20
        optimizer.zero_grad(set_to_none=True)
        result["sample_n"] = sample_n
        result["sample_seconds"] = statistics.median(
            time_sampling(freeze(model), sample_n, 1.0, repeats, warmup)
        )
        result["roundtrip_max_abs"] = roundtrip_max_abs(model, x)
        eval_seconds, likelihood_seconds = time_eval(model, x, repeats, warmup)
        result["eval_seconds"] = statistics.median(eval_seconds)
        result["likelihood_seconds"] = statistics.median(likelihood_seconds)
        return result
    finally:
        torch.set_num_threads(previous_threads)


def format_table(result: dict[str, Any]) -> str:
    """A readable two-column table of a `run_bench` result."""
    shape = "x".join(str(s) for s in result["model"]["image_shape"])
    compiled = " (torch.compile included)" if result.get("compile") else ""
    rows = [
        ("device", f"{result['device']}, torch {result['torch']}, {result['threads']} threads"),
        ("cpu", result.get("cpu_bf16", "")),
        ("model", describe_model(result["model"])),
        ("batch", f"{result['batch_size']} images of {shape}, {result['precision']} training"),
        ("parameters", f"{result['parameters']:,}"),
        (
            "train step",
            f"{result['train_step_seconds']:.4g} s = {result['train_images_per_s']:.4g} "
            f"images/s (median of {result['repeats']} after {result['warmup']} warm-up)",
        ),
        ("first step", f"{result['first_step_seconds']:.3g} s{compiled}"),
        ("peak RSS", f"{result['peak_rss_mib']:.1f} MiB (whole process)"),
    ]
    if "peak_cuda_mib" in result:
        rows.append(("peak CUDA", f"{result['peak_cuda_mib']:.1f} MiB allocated"))
    rows += [
        ("saved for backward", f"{result['saved_for_backward_mib']:.1f} MiB per training forward"),
        ("sampling", f"{result['sample_seconds']:.4g} s for {result['sample_n']} images at T=1"),
        ("decode(encode(x))", f"max |error| {result['roundtrip_max_abs']}"),
        (
            "eval",
            f"{result['eval_seconds']:.4g} s for the batch = "
            f"{result['eval_seconds'] / result['likelihood_seconds']:.2f}x its likelihood pass "
            f"({result['likelihood_seconds']:.4g} s; `imageflows eval`'s bits/dim and round "
            "trips)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def describe_model(model: dict[str, Any]) -> str:
    """One line naming a model config (`Config.to_dict()["model"]`): type, size, components."""
    shape = "x".join(str(s) for s in model["image_shape"])
    if model["type"] == "glow":
        size = f"L={model['levels']} K={model['depth']}, {model['hidden_channels']} channels"
    else:
        attention = "attention" if model["attention"] else "no attention"
        size = (
            f"{model['layout']}, {model['blocks']} blocks of {model['hidden_channels']} channels"
        )
        size += f" with {attention}"
    coupling = f"{model['coupling']} coupling"
    if model["coupling"] == "mixture":
        coupling += f" ({model['components']} logistics)"
    parts = [
        f"{model['type']} {size}",
        coupling,
        "no permutation"
        if model["permutation"] == "none"
        else f"{model['permutation']} permutation",
        f"{model['dequantization']} dequantization",
    ]
    if model["memory_saving"]:
        parts.append("memory saving")
    return ", ".join(parts) + f", {shape} with {model['num_levels']} levels"
