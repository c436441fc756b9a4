"""One tiny trained run on digits, shared by the latent, serve, report and browser tests."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from imageflows.models import preset_config
from imageflows.train import train

TINY = [
    "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1",
    "train.batch_size=32", "train.init_batch_size=64", "model.depth=2",
    "model.hidden_channels=16",
]  # fmt: skip


@functools.cache
def tiny_run() -> Path:
    """A glow-digits run of 4 steps (depth 2, 16 channels), trained once per test session.

    Tests that write into a run (directions, reports) copy it with `copy_run` first.
    """
    root = Path(tempfile.mkdtemp(prefix="imageflows-tiny-run-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    cfg = preset_config("glow-digits").with_overrides(TINY)
    train(cfg, root / "run", progress=False)
    return root / "run"


def copy_run(destination: Path) -> Path:
    """A private copy of `tiny_run()` at `destination`."""
    return Path(shutil.copytree(tiny_run(), destination))
