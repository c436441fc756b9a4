"""Flow++'s mixture-CDF inverse: our bracketed Newton solver against the public bisection.

`bench_mixture_inverse` solves a fixed random set of inversions (`mixture_inverse_problem`) with
both: `solve_mixture_logit` of `imageflows.layers`, and `bisect_mixture_cdf`, the official Flow++
code's fixed 100-step bisection on the clipped CDF (`mixlogistic_invcdf`).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import Tensor

from imageflows.bench.timing import check_device, describe_device, synchronize
from imageflows.layers import Mixture, mixture_log_terms, mixture_params, solve_mixture_logit

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
    device_ = check_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, params, tails = mixture_inverse_problem(elements, components, tail_fraction, seed)
        x, params, tails = x.to(device_), params.to(device_), tails.to(device_)
        result: dict[str, Any] = {
            "device": describe_device(device_),
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


@torch.no_grad()
def bisect_mixture_cdf(
    v: Tensor,
    m: Mixture,
    iterations: int = 100,
    bound_scale: float = 200.0,
    clip: float = 1e-5,
) -> Tensor:
    """The public implementations' inverse: bisection on C(x) = σ(v) for a fixed step count.

    As the official Flow++ code (`mixlogistic_invcdf`) and its PyTorch port do: the target CDF is
    clipped to [clip, 1 − clip], the bracket is μ ± `bound_scale`·Σ_k exp(s_k), the search starts
    at x = 0 and compares exp(log C(x)) with the target. The reference of `bench_mixture_inverse`.
    """
    target = v.sigmoid().clamp(clip, 1 - clip)
    reach = bound_scale * m.log_scales.exp().sum(dim=1, keepdim=True)
    lo, hi = (m.means - reach).amin(dim=1), (m.means + reach).amax(dim=1)
    x = torch.zeros_like(v)
    for _ in range(iterations):
        above = mixture_log_terms(x, m)[0].exp() > target
        x_new = torch.where(above, 0.5 * (x + lo), 0.5 * (x + hi))
        lo, hi = torch.where(above, lo, x), torch.where(above, x, hi)
        x = x_new
    return x


@torch.no_grad()
def mixture_inverse_stats(
    x: Tensor, params: Tensor, components: int, method: str = "newton", iterations: int = 100
) -> dict[str, float | int | str]:
    """Round trip x → v = σ⁻¹(C(x)) → x̂ with one solver, for the benchmark.

    Args:
        x: points `[B, ...]` (float32 or float64; the solve runs in x's dtype and device).
        params: raw parameters `[B, 3K + 2, ...]` as `MixtureCDF` takes them.
        components: K.
        method: "newton" (`solve_mixture_logit`, at most `iterations`) or "bisection"
            (`bisect_mixture_cdf`, exactly `iterations`).
    Returns:
        method, iterations, seconds (the solve alone), max_abs_error = max|x̂ − x|,
        max_rel_error = max|x̂ − x| / max(1, |x|), and max_logit_error = max|σ⁻¹(C(x̂)) − v|.
    """
    if method not in ("newton", "bisection"):
        raise ValueError(f"unknown inverse method {method!r}; choose 'newton' or 'bisection'")
    _, _, m = mixture_params(params, components)
    log_cdf, log_sf, _ = mixture_log_terms(x, m)
    v = log_cdf - log_sf
    synchronize(x.device)
    start = time.perf_counter()
    if method == "newton":
        x_hat, used = solve_mixture_logit(v, m, iterations)
    else:
        x_hat, used = bisect_mixture_cdf(v, m, iterations), iterations
    synchronize(x.device)
    seconds = time.perf_counter() - start
    err = (x_hat - x).abs()
    log_cdf, log_sf, _ = mixture_log_terms(x_hat, m)
    return {
        "method": method,
        "iterations": used,
        "seconds": seconds,
        "max_abs_error": err.max().item(),
        "max_rel_error": (err / x.abs().clamp(min=1)).max().item(),
        "max_logit_error": (log_cdf - log_sf - v).abs().max().item(),
    }
