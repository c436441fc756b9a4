"""Training, evaluation and run directories: `train`, `evaluate`, `load`."""

from imageflows.train.checkpoint import CheckpointWarning, load
from imageflows.train.loop import evaluate, train

__all__ = ["CheckpointWarning", "evaluate", "load", "train"]
