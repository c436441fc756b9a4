"""Speed and memory of one model configuration: the one entry point for measuring (DESIGN §5).

`run_bench` builds a model from a config, initialises it on random uint8 images and reports the
whole training step's throughput (forward, backward, Adam step; median of repeats after warm-up),
peak memory, the bytes one training forward saves for backward, sampling time and the exactness
of `decode(encode(x))`. Peak RSS is a per-process high-water mark: measure one configuration per
process (one `imageflows bench` invocation each) with nothing else running.

`bench_mixture_inverse` compares the two inverses of Flow++'s mixture CDF on a fixed random set
of elements: our bracketed Newton solver and the public implementations' 100-step bisection.
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from imageflows.allocator import keep_freed_memory
from imageflows.config import Config
from imageflows.layers import mixture_inverse_stats, mixture_log_terms, mixture_params
from imageflows.metrics import bits_per_dim
from imageflows.models import build_model
from imageflows.train.loop import make_optimizer


def training_loss(model: nn.Module, x: Tensor, precision: str = "fp32") -> Tensor:
    """Mean bits/dim of a uint8 batch `x` [B, C, H, W]: the training objective.

    `precision="bf16"` autocasts the forward as training does (conditioners in bf16; the
    flow's main path, log-dets and the loss stay float32).
    """
    with torch.autocast(x.device.type, torch.bfloat16, enabled=precision == "bf16"):
        return bits_per_dim(model.log_prob(x), model.num_dims).mean()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    precision: str = "fp32",
    compile: bool = False,
) -> Callable[[], None]:
    """One training step on `x` as a function: zero the gradients, backward, Adam step."""
    model.train()
    loss_fn = partial(training_loss, model, precision=precision)
    if compile:
        loss_fn = torch.compile(loss_fn)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        optimizer.step()

    return step


def time_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    repeats: int = 10,
    warmup: int = 3,
    precision: str = "fp32",
    compile: bool = False,
) -> tuple[float, list[float]]:
    """Seconds of the first training step on `x` (where `compile` compiles) and of each of
    `repeats` later ones, timed after `warmup` untimed steps (the first included)."""
    step = train_step(model, optimizer, x, precision, compile)
    first = _time(step, 1, 0, x.device)[0]
    return first, _time(step, repeats, max(warmup - 1, 0), x.device)


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
        loss = training_loss(model, x, precision)
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


def training_setup(
    cfg: Config, batch_size: int = 16, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[nn.Module, torch.optim.Optimizer, Tensor]:
    """The benchmarked model of `cfg.model`, initialised on a random uint8 batch, with Adam at
    training's first learning rate (`cfg.train.lr` / `cfg.train.warmup_steps`), and that batch.

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
    lr = cfg.train.lr * min(1.0, 1.0 / max(cfg.train.warmup_steps, 1))
    return model, make_optimizer(model, lr), x


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
    T=1), `roundtrip_max_abs`, plus the device, torch version, threads and configuration.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or sample_n < 1 or threads < 1:
        raise ValueError(
            "bench needs batch_size, repeats, sample_n, threads >= 1 and warmup >= 0, got "
            f"{batch_size}, {repeats}, {sample_n}, {threads} and {warmup}"
        )
    device_ = _check_device(device)
    keep_freed_memory()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, optimizer, x = training_setup(cfg, batch_size, seed, device_)
        lr = optimizer.param_groups[0]["lr"]
        first_step, steps = time_train_step(
            model, optimizer, x, repeats, warmup, cfg.train.precision, cfg.train.compile
        )
        step_seconds = statistics.median(steps)
        result: dict[str, Any] = {
            "device": _describe(device_),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "model": cfg.to_dict()["model"],
            "batch_size": batch_size,
            "precision": cfg.train.precision,
            "compile": cfg.train.compile,
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
        result["saved_for_backward_mib"] = (
            saved_for_backward_bytes(model, x, cfg.train.precision) / 2**20
        )
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
    compiled = " (torch.compile included)" if result.get("compile") else ""
    rows = [
        ("device", f"{result['device']}, torch {result['torch']}, {result['threads']} threads"),
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


# The public bisection clips the CDF to [1e-5, 1 − 1e-5], i.e. |σ⁻¹(C)| to ln(1e5 − 1) ≈ 11.5.
CLIP_LOGIT = math.log(1e5 - 1)
SOLVERS = {"newton": "Newton (ours)", "bisection": "bisection"}


def mixture_inverse_problem(
    elements: int,
    components: int,
    tail_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed random set of mixture-CDF inversions: `(x [n], params [n, 3K + 2], tails [n])`.

    Raw parameters as a conditioner emits them: a ~ N(0, ½²), b ~ N(0, 1), logits and means
    ~ N(0, 2²), log-scales ~ U(−5, 1). Most x are drawn from each element's own mixture (one
    component's CDF in [1e-4, 1 − 1e-4]); a `tail_fraction` of them sits t ∈ [12, 40] of the
    widest scale beyond every mean, so |σ⁻¹(C(x))| ≥ t. `tails` marks the elements with
    |σ⁻¹(C(x))| > `CLIP_LOGIT`, where the public bisection's clip is active.
    """
    g = torch.Generator().manual_seed(seed)
    n, k = elements, components

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)

    logits, means, log_scales = 2 * normal(n, k), 2 * normal(n, k), uniform(-5, 1, n, k)
    params = torch.cat([0.5 * normal(n, 1), normal(n, 1), logits, means, log_scales], dim=1)
    pick = torch.multinomial(logits.softmax(dim=1), 1, generator=g)  # (n, 1)
    u = uniform(1e-4, 1 - 1e-4, n)
    x = means.gather(1, pick)[:, 0] + log_scales.gather(1, pick)[:, 0].exp() * (u / (1 - u)).log()
    # every component's (x − μ_k)/σ_k is then at least t in magnitude, and so is the logit
    reach = means.abs().amax(dim=1) + log_scales.exp().amax(dim=1) * uniform(12, 40, n)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    x = torch.where(torch.rand(n, generator=g) < tail_fraction, sign * reach, x)
    x, params = x.to(dtype), params.to(dtype)
    _, _, mixture = mixture_params(params.double(), k)
    log_cdf, log_sf, _ = mixture_log_terms(x.double(), mixture)
    return x, params, (log_cdf - log_sf).abs() > CLIP_LOGIT


def bench_mixture_inverse(
    elements: int = 100_000,
    components: int = 32,
    repeats: int = 3,
    warmup: int = 1,
    threads: int = 2,
    seed: int = 0,
    device: str = "cpu",
    tail_fraction: float = 0.1,
) -> dict[str, Any]:
    """Our bracketed Newton inverse of the mixture CDF against the public 100-step bisection.

    Both solve the same `mixture_inverse_problem` in float32 (`mixture_inverse_stats`).
    Returns a JSON-ready dict with, per solver (`newton`, `bisection`): `iterations`, `seconds`
    (median of `repeats` after `warmup`), round-trip errors over all elements (`max_abs_error`,
    `max_rel_error` = max |x̂ − x| / max(1, |x|), `max_logit_error` = max |σ⁻¹(C(x̂)) − v|) and
    the same split into `bulk_*` and `tails_*`; `speedup` (bisection's seconds over Newton's),
    plus the device, torch version, threads and problem size.
    """
    if elements < 1 or components < 1 or repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(
            "the mixture-inverse bench needs elements, components, repeats, threads >= 1 and "
            f"warmup >= 0, got {elements}, {components}, {repeats}, {threads} and {warmup}"
        )
    if not 0 <= tail_fraction <= 1:
        raise ValueError(f"tail_fraction must be in [0, 1], got {tail_fraction}")
    device_ = _check_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, params, tails = mixture_inverse_problem(elements, components, tail_fraction, seed)
        x, params, tails = x.to(device_), params.to(device_), tails.to(device_)
        result: dict[str, Any] = {
            "device": _describe(device_),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "elements": elements,
            "components": components,
            "dtype": str(x.dtype).removeprefix("torch."),
            "tail_fraction": tail_fraction,
            "tail_elements": int(tails.sum()),
            "tail_logit": CLIP_LOGIT,
            "seed": seed,
            "repeats": repeats,
            "warmup": warmup,
        }
        for method in SOLVERS:
            runs = [
                mixture_inverse_stats(x, params, components, method)
                for _ in range(warmup + repeats)
            ][warmup:]
            stats = {**runs[0], "seconds": statistics.median(r["seconds"] for r in runs)}
            # Elements are solved independently, so a subset's errors are the full solve's.
            for region, mask in (("bulk", ~tails), ("tails", tails)):
                if mask.any():
                    part = mixture_inverse_stats(x[mask], params[mask], components, method)
                    for key in ("max_abs_error", "max_rel_error", "max_logit_error"):
                        stats[f"{region}_{key}"] = part[key]
            result[method] = stats
        result["speedup"] = result["bisection"]["seconds"] / result["newton"]["seconds"]
        return result
    finally:
        torch.set_num_threads(previous_threads)


def format_mixture_inverse(result: dict[str, Any]) -> str:
    """A readable table of a `bench_mixture_inverse` result."""
    header = [
        f"device    {result['device']}, torch {result['torch']}, {result['threads']} threads",
        f"problem   {result['elements']:,} elements of {result['components']} logistics, "
        f"{result['dtype']}, seed {result['seed']}; {result['tail_elements']:,} in the tails "
        f"(|logit C(x)| > {result['tail_logit']:.4g}, where the public bisection clips C)",
        f"timing    median of {result['repeats']} after {result['warmup']} warm-up",
        "",
    ]
    columns = ("iterations", "seconds", "rel. error", "tails", "logit error", "tails")
    rows = [("solver", *columns)]
    for method, name in SOLVERS.items():
        s = result[method]
        rows.append(
            (
                name,
                str(s["iterations"]),
                f"{s['seconds']:.4g}",
                _error(s.get("bulk_max_rel_error")),
                _error(s.get("tails_max_rel_error")),
                _error(s.get("bulk_max_logit_error")),
                _error(s.get("tails_max_logit_error")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    footer = [
        "",
        f"Newton is {result['speedup']:.1f}x faster. Errors are maxima of |x̂ − x| / max(1, |x|) "
        "and |σ⁻¹(C(x̂)) − σ⁻¹(C(x))|, in the bulk and in the tails.",
    ]
    return "\n".join(header + [line.rstrip() for line in lines] + footer)


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


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


def _check_device(device: str) -> torch.device:
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device_


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"
