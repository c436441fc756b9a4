"""The CPU's bf16 units, read from /proc/cpuinfo, and the one warning about emulated bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imageflows import hardware
from imageflows.bench import timing


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


def test_bf16_units_are_read_from_the_flags(tmp_path: Path) -> None:
    hardware.cpu_bf16_units.cache_clear()
    assert hardware.cpu_bf16_units(cpuinfo(tmp_path, "fpu avx2 fma")) == ()
    assert hardware.cpu_bf16_units(cpuinfo(tmp_path / "..", "avx512f avx512_bf16 amx_bf16")) == (
        "avx512_bf16",
        "amx_bf16",
    )
    assert hardware.cpu_bf16_units(tmp_path / "missing") is None
    hardware.cpu_bf16_units.cache_clear()


def test_emulated_bf16_warns_once_naming_the_missing_units(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ())
    hardware.warn_if_slow_cpu_bf16.cache_clear()
    with pytest.warns(RuntimeWarning, match="without avx512_bf16 or amx_bf16"):
        assert hardware.warn_if_slow_cpu_bf16()
    assert hardware.warn_if_slow_cpu_bf16()  # cached: no second warning
    assert hardware.describe_cpu_bf16() == "no bf16 units (none of avx512_bf16, amx_bf16)"
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ("amx_bf16",))
    hardware.warn_if_slow_cpu_bf16.cache_clear()
    assert not hardware.warn_if_slow_cpu_bf16()
    hardware.warn_if_slow_cpu_bf16.cache_clear()


def test_the_cpu_model_is_read_and_named_beside_speed_figures(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    hardware.cpu_model.cache_clear()
    assert hardware.cpu_model(path) == "AMD EPYC 7B13"
    assert hardware.cpu_model(tmp_path / "missing") is None
    hardware.cpu_model.cache_clear()

    monkeypatch.setattr(timing, "cpu_model", lambda: "AMD EPYC 7B13")
    assert timing.describe_device(torch.device("cpu")).startswith("cpu (AMD EPYC 7B13, ")
    monkeypatch.setattr(timing, "cpu_model", lambda: None)
    assert "EPYC" not in timing.describe_device(torch.device("cpu"))
