"""The glibc malloc settings of `imageflows.allocator`."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import pytest
import torch

from imageflows.allocator import keep_freed_memory
from imageflows.bench import run_bench
from imageflows.models import preset_config
from imageflows.train import train

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mmapped_blocks() -> int:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _Mallinfo2
    return mallinfo2().hblks


@pytest.fixture
def no_malloc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MALLOC_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


@pytest.mark.skipif(not ON_GLIBC, reason="malloc tuning applies to glibc only")
def test_a_tensor_below_16_mib_comes_from_the_heap(no_malloc_env: None) -> None:
    assert keep_freed_memory() is True
    before = _mmapped_blocks()
    tensor = torch.empty(8 << 20, dtype=torch.uint8)  # 8 MiB: glibc's default would mmap it
    assert _mmapped_blocks() == before
    del tensor


@pytest.mark.skipif(ON_GLIBC, reason="tests the fallback off glibc")
def test_off_glibc_nothing_is_tuned(no_malloc_env: None) -> None:
    assert keep_freed_memory() is False


@pytest.mark.skipif(not ON_GLIBC, reason="malloc tuning applies to glibc only")
@pytest.mark.parametrize(
    "key, value", [("MALLOC_ARENA_MAX", "2"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")]
)
def test_the_users_own_malloc_settings_win(
    no_malloc_env: None, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(key, value)
    assert keep_freed_memory() is False


@pytest.mark.skipif(not ON_GLIBC, reason="malloc tuning applies to glibc only")
def test_library_functions_leave_malloc_alone(
    no_malloc_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the CLI's entry point tunes malloc: `train` and `run_bench` load no C library."""

    def no_library(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a library function loaded a C library: ctypes.CDLL{args}")

    tiny = preset_config("glow-digits").with_overrides(
        ["model.depth=1", "model.hidden_channels=8", "train.steps=1", "train.batch_size=8",
         "train.init_batch_size=16", "train.eval_images=16", "train.sample_temperatures="]
    )  # fmt: skip
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    run_bench(tiny, batch_size=2, repeats=1, warmup=0, sample_n=1, threads=1)
    train(tiny, tmp_path / "run", progress=False)
