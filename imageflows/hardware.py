"""What the CPU is and offers for bf16: matrix units decide whether bf16 training is fast on a CPU,
and its model name goes beside every speed figure."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

# x86 flags of bf16 arithmetic in hardware (AVX-512 BF16, AMX tiles); oneDNN runs bf16
# matrix products on them, and emulates bf16 (slower than float32) without them
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC"), None where unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


@functools.cache
def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...] | None:
    """The bf16 flags of this CPU among `BF16_FLAGS`, () if none, None where unknown (no
    /proc/cpuinfo, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(flag for flag in BF16_FLAGS if flag in flags)


def describe_cpu_bf16() -> str:
    """E.g. "bf16 units: avx512_bf16", or "no bf16 units (none of avx512_bf16, amx_bf16)"."""
    units = cpu_bf16_units()
    if units is None:
        return "bf16 units: unknown"
    if not units:
        return f"no bf16 units (none of {', '.join(BF16_FLAGS)})"
    return f"bf16 units: {', '.join(units)}"


@functools.cache
def warn_if_slow_cpu_bf16() -> bool:
    """Warn once per process when bf16 is asked for on a CPU without bf16 units; True if so."""
    if cpu_bf16_units() != ():
        return False
    warnings.warn(
        f"train.precision=bf16 on a CPU without {' or '.join(BF16_FLAGS)}: bf16 is emulated "
        "there and trains several times slower than fp32",
        RuntimeWarning,
        stacklevel=2,
    )
    return True
