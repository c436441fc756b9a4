"""Data-parallel training over the processes that `torchrun` starts (DESIGN section 7).

Every rank holds the whole model and the whole data set. Each global batch of the single-process
data order is cut into one contiguous slice per rank, so the global batch and the data order do
not depend on the number of processes; the loss of a slice is scaled so that DDP's average of
the ranks' gradients is the gradient of the global batch's mean. Rank 0 initialises the model
and broadcasts it, and is the only rank that writes files; evaluation is shared out by batches.
A single process (no `WORLD_SIZE`, or 1) needs no process group and runs the same code.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from imageflows.metrics import ImageScores, merge_scores, score_images, summarize

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: `rank` of `world_size`, computing on `device`."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that logs, samples and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextlib.contextmanager
def process_group() -> Iterator[DistEnv]:
    """Join the job's process group for the duration of the block.

    With `WORLD_SIZE` > 1 (as set by `torchrun`) the group is initialised from the environment
    (`MASTER_ADDR`, `MASTER_PORT`, `RANK`), with NCCL on GPUs and gloo on CPUs, and destroyed at
    the end. A group the caller has already initialised is used and left alone. Each rank
    computes on GPU `LOCAL_RANK` where there are GPUs, else on the CPU.
    """
    owned = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", "0")), _env_int("WORLD_SIZE", 1)
    device = _device()
    if world_size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError(
                f"WORLD_SIZE={world_size}, but this PyTorch has no torch.distributed"
            )
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owned = True
    try:
        yield DistEnv(rank, world_size, device)
    finally:
        if owned:
            # DDP's reducer sits in reference cycles that keep the group's gloo work alive;
            # left to the interpreter's exit, gloo's threads can abort the process (SIGABRT)
            gc.collect()
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def _device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = _env_int("LOCAL_RANK", 0)
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank}, but this node has {torch.cuda.device_count()} GPU(s); "
            "start at most that many processes per node (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def shard(indices: Tensor, env: DistEnv) -> Tensor:
    """This rank's contiguous slice of a global batch; slice sizes differ by at most one."""
    return indices.tensor_split(env.world_size)[env.rank]


def run_on_main(env: DistEnv, fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` on rank 0 only and return its result on every rank.

    An exception on rank 0 is raised on every rank, so no rank waits forever for the others.
    The result must pickle.
    """
    if not env.distributed:
        return fn(*args)
    box: list[Any] = [None]
    if env.is_main:
        try:
            box = [(True, fn(*args))]
        except Exception as err:  # re-raised below, on every rank
            box = [(False, err)]
    dist.broadcast_object_list(box, src=0, device=_comm_device(env))
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _comm_device(env: DistEnv) -> torch.device:
    """Where collective buffers live: NCCL needs GPU tensors, gloo takes CPU ones."""
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_module(module: nn.Module, env: DistEnv) -> None:
    """Overwrite every parameter and buffer of `module` with rank 0's, in place."""
    if not env.distributed:
        return
    for tensor in module.state_dict().values():
        # Collectives take no bool tensors everywhere; the record of initialisation is one.
        carrier = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        carrier = carrier.to(_comm_device(env))
        dist.broadcast(carrier, src=0)
        tensor.copy_(carrier)


def all_reduce(values: list[float], env: DistEnv, op: str = "sum") -> list[float]:
    """`values` summed (or maxed, `op="max"`) over ranks, in float64."""
    if not env.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


class _LogProb(nn.Module):
    """`model.objective` as a module's `forward`: the call that DDP synchronises gradients for."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, generator: torch.Generator | None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        return self.model.objective(x, generator, labels)


def data_parallel(model: nn.Module, env: DistEnv) -> nn.Module:
    """A module computing `model.objective(x, generator, labels)` (log p and the classifier's
    cross-entropy) whose backward all-reduces gradients.

    Wrap after the data-dependent init: DDP registers the parameters as they are. Buffers are
    not re-broadcast every step, since training does not change them.
    """
    log_prob = _LogProb(model)
    if not env.distributed:
        return log_prob
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    # Training leaves buffers alone: no broadcast before every forward (newer PyTorch calls
    # the option forward_sync_buffers).
    parameters = inspect.signature(DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return DistributedDataParallel(log_prob, device_ids=device_ids, **{key: False})


def sharded_evaluate(
    model: nn.Module,
    images: Tensor,
    batch_size: int,
    seed: int,
    env: DistEnv,
    labels: Tensor | None = None,
    iw_samples: int = 1,
) -> dict:
    """`imageflows.metrics.evaluate` on all of `images`, its batches shared out among the ranks.

    Batch `i` goes to rank `i mod world_size` and keeps its own noise (`metrics.batch_seed`);
    the ranks' per-image scores are gathered and put in image order, so every rank returns
    `evaluate`'s figures (percentiles included) of the same per-image numbers that one
    process computes alone.
    """
    scores = score_images(
        model, images, batch_size, seed, iw_samples, (env.rank, env.world_size), labels
    )
    return summarize(gather_scores(scores, env), iw_samples, labels)


def gather_scores(scores: ImageScores, env: DistEnv) -> ImageScores:
    """Every rank's `ImageScores` (CPU tensors), merged in image order, on every rank."""
    if not env.distributed:
        return scores
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, scores)
    return merge_scores(parts)
