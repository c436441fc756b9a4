"""Data-parallel training on CPU (gloo): two processes train like one (issue 5)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from imageflows.config import Config, ModelConfig, TrainConfig
from imageflows.metrics import evaluate
from imageflows.models.dequantize import UniformDequantizer
from imageflows.runs import evaluate_run
from imageflows.train import loop, train
from imageflows.train.data_order import load_data
from imageflows.train.distributed import DistEnv, process_group, shard, sharded_evaluate
from imageflows.train.state import Run

from ._signals import signal_after_step

WORLD = 2
# 15 images per step: uneven slices of 8 and 7, which the loss scaling must handle.
CFG = Config(
    model=ModelConfig(image_shape=(1, 8, 8), num_levels=17, levels=2, depth=2, hidden_channels=16),
    train=TrainConfig(
        steps=3,
        batch_size=15,
        init_batch_size=64,
        warmup_steps=2,
        ema=0.9,
        eval_every=3,
        eval_images=40,
        eval_batch_size=16,
        sample_temperatures=(),
        checkpoint_every=3,
        log_every=1,
    ),
)
EVAL_IMAGES, EVAL_BATCH = 90, 16  # 6 batches, the last one short: 3 per rank


def _midpoint(self, x, num_levels, dtype, generator):
    """u = ½ for every pixel. Each rank draws its own dequantization noise, so the runs are
    compared with noise that does not depend on which rank handles an image."""
    return (x.to(dtype) + 0.5) / num_levels, x.new_zeros(x.shape[0], dtype=dtype)


def _worker(rank: int, port: int, tmp: Path) -> None:
    """One rank, set up as `torchrun` sets up its processes: by environment variables."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    with process_group() as env:
        assert dist.is_initialized() and (env.rank, env.world_size) == (rank, WORLD)
        train_data, test_data = load_data(CFG)
        test_images = test_data.images
        run = Run(CFG, tmp / "unused", env, train_data)
        run.start(None)
        torch.save(run.model.state_dict(), tmp / f"init_{rank}.pt")
        result = sharded_evaluate(run.model, test_images[:EVAL_IMAGES], EVAL_BATCH, 0, env)
        (tmp / f"eval_{rank}.json").write_text(json.dumps(result))
        uniform = UniformDequantizer.forward
        UniformDequantizer.forward = _midpoint
        train(CFG, tmp / "ddp", progress=False)  # joins the group already there
        UniformDequantizer.forward = uniform
        scores = evaluate_run(tmp / "ddp", iw_samples=2, batch_size=EVAL_BATCH)
        (tmp / f"eval_run_{rank}.json").write_text(json.dumps(scores))
        try:  # rank 0 finds the run there; every rank must raise, none wait for the others
            train(CFG, tmp / "ddp", progress=False)
        except FileExistsError as err:
            (tmp / f"refused_{rank}.txt").write_text(str(err))
        if rank == 1:  # SIGTERM to rank 1 alone after its first step: both ranks stop there
            loop.train_step = signal_after_step(1, signal.SIGTERM)
        summary = train(CFG, tmp / "signalled", progress=False)
        (tmp / f"signalled_{rank}.json").write_text(json.dumps(summary))
    assert not dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp: Path) -> None:
    # Waits for both ranks; if one fails, the other is terminated and its error raised here.
    mp.start_processes(_worker, args=(_free_port(), tmp), nprocs=WORLD, start_method="spawn")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    _spawn(tmp)
    return tmp


def _step_state(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{CFG.train.steps:07d}" / name)


def _single_process_init() -> tuple[Run, torch.Tensor]:
    train_data, test_data = load_data(CFG)
    run = Run(CFG, Path("unused"), DistEnv(0, 1, torch.device("cpu")), train_data)
    run.start(None)
    return run, test_data.images


def test_ranks_start_from_rank_0s_initialisation(ddp_run: Path) -> None:
    init = [torch.load(ddp_run / f"init_{rank}.pt") for rank in range(WORLD)]
    reference, _ = _single_process_init()
    assert bool(init[1]["initialized"])  # rank 1 ran no init of its own
    for key, value in reference.model.state_dict().items():
        for rank in range(WORLD):
            assert torch.equal(init[rank][key], value), (rank, key)


def test_an_error_on_rank_0_is_raised_on_every_rank(ddp_run: Path) -> None:
    for rank in range(WORLD):
        assert "already holds a run" in (ddp_run / f"refused_{rank}.txt").read_text()


def test_evaluation_is_shared_out_exactly(ddp_run: Path) -> None:
    results = [json.loads((ddp_run / f"eval_{rank}.json").read_text()) for rank in range(WORLD)]
    run, test_images = _single_process_init()
    alone = evaluate(run.model, test_images[:EVAL_IMAGES], EVAL_BATCH, seed=0)
    assert results[0] == results[1]
    assert results[0]["n"] == alone["n"] == EVAL_IMAGES
    assert results[0]["recon_max_abs"] == alone["recon_max_abs"] < 0.01
    assert results[0]["bpd"] == pytest.approx(alone["bpd"], rel=1e-12)


def test_imageflows_eval_under_torchrun_gives_the_one_process_figures(ddp_run: Path) -> None:
    """`imageflows eval` (`evaluate_run`) in two ranks: each scores half of the batches, and
    both report what one process reports, percentiles and importance weighting included."""
    results = [json.loads((ddp_run / f"eval_run_{r}.json").read_text()) for r in range(WORLD)]
    alone = evaluate_run(ddp_run / "ddp", iw_samples=2, batch_size=EVAL_BATCH)
    assert results[0] == results[1]
    assert (results[0]["processes"], alone["processes"]) == (WORLD, 1)
    assert results[0]["n"] == alone["n"] == load_data(CFG)[1].images.shape[0] > EVAL_BATCH
    for key in ("iw_samples", "roundtrip_failures", "roundtrip_failures_float32", "step"):
        assert results[0][key] == alone[key], key
    for key in ("bpd", "bpd_median", "bpd_p1", "bpd_p99", "recon_max_abs"):
        assert results[0][key] == pytest.approx(alone[key], rel=1e-9, abs=1e-12), key


def test_two_processes_train_like_one(
    ddp_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UniformDequantizer, "forward", _midpoint)
    one = tmp_path / "one"
    train(CFG, one, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        ddp, alone = _step_state(ddp_run / "ddp", name), _step_state(one, name)
        assert ddp.keys() == alone.keys()
        for key in alone:
            torch.testing.assert_close(ddp[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)
        init = torch.load(ddp_run / "init_0.pt")
        moved = sum(not torch.allclose(init[k], alone[k], atol=1e-4) for k in alone)
        assert moved > len(alone) // 2, name  # training changed the weights
    records = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (ddp_run / "ddp", one)
    ]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]
    for a, b in zip(*records, strict=True):
        for key in ("train_bpd", "test_bpd", "lr"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(ddp_run: Path) -> None:
    for rank in range(WORLD):
        summary = json.loads((ddp_run / f"signalled_{rank}.json").read_text())
        assert summary["stopped"] == "signal" and summary["steps"] == 1, rank
    assert (ddp_run / "signalled" / "checkpoints" / "step_0000001").is_dir()


def test_shards_cover_each_batch_once() -> None:
    batch = torch.arange(15)
    parts = [shard(batch, DistEnv(r, 4, torch.device("cpu"))) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch)
    assert [len(p) for p in parts] == [4, 4, 4, 3]


def test_batch_smaller_than_the_world_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.contextmanager
    def group_of_32() -> Iterator[DistEnv]:
        yield DistEnv(0, 32, torch.device("cpu"))

    monkeypatch.setattr("imageflows.train.loop.process_group", group_of_32)
    with pytest.raises(ValueError, match="batch_size=15.*32 processes"):
        train(CFG, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
