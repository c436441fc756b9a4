"""A run's `metrics.jsonl`: the training window, appending, rewinding at a resume, TensorBoard.

Records are JSON objects with a `step`: training records (`train_bpd`, `lr`, `grad_norm`,
`images_per_s`, `time`, `skipped_steps`), test records (`test_bpd`, `recon_max_abs`) and guard
events (`event: "reload"`). Only rank 0 writes; other ranks hold a disabled log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imageflows._io import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class Window:
    """Training statistics since the last metrics record."""

    def __init__(self) -> None:
        self.bpd: list[float] = []
        self.grad_norm: list[float] = []
        self.class_bits: list[float] = []
        self.skipped = self.images = 0
        self.seconds = 0.0

    def add(
        self,
        bpd: float | None,
        grad_norm: float,
        images: int,
        seconds: float,
        class_bits: float | None = None,
    ) -> None:
        """One step: its bits/dim (`None` if skipped), gradient norm, images, seconds and the
        classifier's cross-entropy in bits (Glow's ycond model; else None)."""
        if bpd is None:
            self.skipped += 1
        else:
            self.bpd.append(bpd)
            self.grad_norm.append(grad_norm)
            if class_bits is not None:
                self.class_bits.append(class_bits)
        self.images += images
        self.seconds += seconds

    def record(self, step: int, lr: float, elapsed: float) -> dict:
        """The record `{"step", "train_bpd", "lr", "grad_norm", "images_per_s", "time",
        "skipped_steps"}` (means over the window), then reset."""
        record = {
            "step": step,
            "train_bpd": _mean(self.bpd),
            "lr": lr,
            "grad_norm": _mean(self.grad_norm),
            "images_per_s": self.images / self.seconds if self.seconds > 0 else None,
            "time": elapsed,
            "skipped_steps": self.skipped,
        }
        if self.class_bits:
            record["train_class_bits"] = _mean(self.class_bits)
        self.__init__()
        return record


class MetricsLog:
    """The records of `workdir/metrics.jsonl` up to the step a run starts from, and the file
    (plus TensorBoard events, given a `SummaryWriter` class) that new ones are appended to.

    Records after `step` belong to an abandoned future (the run resumes from an earlier
    checkpoint) and are dropped from the file, as is a last line cut short by a crash.
    """

    def __init__(
        self, workdir: Path, step: int, writer_class: type | None = None, enabled: bool = True
    ) -> None:
        self.path, self.writer_class, self.enabled = workdir / METRICS_FILE, writer_class, enabled
        self.records: list[dict] = []
        self.writer: Any = None
        self.rewind(step)

    def rewind(self, step: int) -> None:
        """Forget the records after `step`, in the file and in TensorBoard."""
        if not self.enabled:
            return
        self.records = read_metrics(self.path, up_to=step)
        self.close()
        if self.writer_class is not None:
            purge = step + 1 if step > 0 else None
            self.writer = self.writer_class(log_dir=str(self.path.parent), purge_step=purge)

    def append(self, record: dict) -> None:
        """Append `record` to the file (and its numbers to TensorBoard)."""
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and type(value) in (int, float):
                    self.writer.add_scalar(key, value, record["step"])

    def last_test(self) -> dict | None:
        """The newest test record, if any."""
        return next((r for r in reversed(self.records) if "test_bpd" in r), None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path: Path, up_to: int) -> list[dict]:
    """Records of `metrics.jsonl` up to step `up_to`; later ones and a last line cut short by
    a crash are dropped from the file."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record") from None
    kept = [r for r in records if r["step"] <= up_to]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def summary_writer_class() -> type:
    """TensorBoard's `SummaryWriter`, or a clear error naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError(
            "train.tensorboard=true needs the tensorboard package: pip install 'imageflows[tb]'"
        ) from None
    return SummaryWriter


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
