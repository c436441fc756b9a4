"""Training and run directories: `train(cfg, workdir)`, `load(run_dir)`."""

from imageflows.train.checkpoint import CheckpointWarning, load
from imageflows.train.loop import train

__all__ = ["CheckpointWarning", "load", "train"]
