"""`imageflows bench`, the one entry point for speed and memory (DESIGN section 5).

`run_bench` measures one model configuration's training step, memory and sampling
(`imageflows.bench.training`); `bench_mixture_inverse` times Flow++'s mixture-CDF inverse
against the public bisection (`imageflows.bench.mixture`).
"""

from imageflows.bench.mixture import (
    bench_mixture_inverse,
    bisect_mixture_cdf,
    format_mixture_inverse,
    mixture_inverse_problem,
    mixture_inverse_stats,
)
from imageflows.bench.training import (
    describe_model,
    format_table,
    peak_rss_mib,
    roundtrip_max_abs,
    run_bench,
    saved_for_backward_bytes,
    time_eval,
    time_sampling,
    time_train_step,
    training_setup,
)

__all__ = [
    "bench_mixture_inverse",
    "bisect_mixture_cdf",
    "describe_model",
    "format_mixture_inverse",
    "format_table",
    "mixture_inverse_problem",
    "mixture_inverse_stats",
    "peak_rss_mib",
    "roundtrip_max_abs",
    "run_bench",
    "saved_for_backward_bytes",
    "time_eval",
    "time_sampling",
    "time_train_step",
    "training_setup",
]
