#!/usr/bin/env python
"""Test bits/dim of two public PyTorch Glow ports trained on MNIST at equal wall-clock, 1 thread.

    OMP_NUM_THREADS=1 python scripts/ports-quality.py {rosinality,y0ast} CHECKOUT MNIST_DIR \
        --minutes M [--test-images 10000] [--json-out P] [--seed 0] [--record-every 5]

For comparison with `imageflows train --preset glow-mnist` (L=2, K=16, 128 hidden channels,
affine coupling, LU 1x1 conv: 876,064 parameters). Nothing of theirs is copied here: their
`model.py` is imported from the CHECKOUT you give (a checkout of github.com/rosinality/glow-pytorch
or github.com/y0ast/Glow-PyTorch), and their `train.py` step is reproduced as below. The clock
starts before the model is built (so their data-dependent init counts) and training stops at the
first step that ends past M minutes; the test evaluation afterwards is not timed.

Both ports: L=2, K=16, hidden 128, affine coupling, LU 1x1 (their default), 8 bits, 1x28x28
(both models take 28x28 as it is: 28 -> 14 -> 7 squeezes), which gives rosinality 869,040 and
y0ast 878,384 parameters (-0.8% / +0.3% of ours). MNIST from its IDX files via our
`imageflows.data.digits.load_mnist` (uint8 0..255); the training set is reshuffled every epoch
with a numpy generator seeded by --seed.

rosinality (train.py at 97081ff): Adam lr 1e-4 (train.py:34, :173), default betas, no weight
decay, no warm-up (the warm-up at :134 is commented out, :135 uses args.lr), no gradient clipping,
batch 16 (:19). Data x/2^n_bits - 0.5 (:116) with n_bits=8 here instead of their 5 (:33),
dequantised by + U[0,1)/256 (:121, :127). Step 0 only runs the model under no_grad on the first
batch (ActNorm's data-dependent init, :118-124), with no optimiser step; every later step is a
new batch. Loss = -(log_p + mean(logdet) - D*log(256)) / (D*ln 2), their calc_loss (:82-93).
Their hidden width is set through `AffineCoupling.__init__.__defaults__` since `Flow` never passes
`filter_size` (it is 512 otherwise).
Adaptations: D = C*H*W = 784, where their calc_loss hard-codes 3*img_size^2 (3 channels); this
only rescales the loss (Adam is invariant to it, up to eps) and makes it the true bits/dim. Their
loader's Resize/CenterCrop are no-ops at 28x28; their RandomHorizontalFlip (:46, meant for face
images) is left out, as digits are not mirror-symmetric. No DataParallel wrapper (CPU).

y0ast (train.py at 13c7b01): Adamax lr 5e-4 (:409), weight_decay 5e-5 (:145), default betas;
warm-up LambdaLR min(1, (epoch+1)/warmup) with warmup=5 (:147-148, :412-416), stepped once per
*epoch* (scheduler.step() in the EPOCH_COMPLETED handler, :278), so the lr is 1e-4 in epoch 0,
2e-4 in epoch 1, ..., 5e-4 from epoch 4 on; max_grad_clip=0 and max_grad_norm=0 (:376-388), so no
clipping; batch 64 (:395), drop_last=True (:120), shuffled. Before training, ActNorm
init by one no_grad forward in train mode on n_init_batches=8 batches (512 images) drawn from a
fresh shuffle of the training set (:251-272). learn_top=True (:361-366), y_condition=False,
actnorm_scale 1.0, flow_permutation invconv, LU_decomposed True, coupling affine (their defaults).
Data x/256 - 0.5 (datasets.py:11-22); the model itself adds U(0, 1/256) noise and returns
bits/dim -(log N(z) + logdet - D*log(256)) / (D*ln 2) per image (utils.py:19-35, model.py:271-289);
the loss is its batch mean (train.py:41-49).
Adaptations: image_shape (28, 28, 1) (their datasets are 32x32x3; Glow() takes any shape with
H, W divisible by 2^L). Their default augmentation (RandomAffine translate 0.1, plus horizontal
flip for CIFAR-10; datasets.py:47-51) is left out, as in our MNIST training. The per-epoch test
evaluation of their train.py (:274-283) is not run (it would only take training time); their
seed 0 means a random seed there (`seed or random.randint`, :23), here --seed is used as given.

Test bits/dim (both): the first --test-images MNIST test images x in {0..255}, u ~ U[0,1) from a
fixed seed, y = (x + u)/256 - 0.5 (both ports' scaling), in batches of 500 under torch.no_grad()
and model.eval():  bpd = -(log p_Y(y) - D*log(256)) / (D*ln 2), D = 784, log p_Y(y) = log N(z) +
log|det dz/dy|. The -D*log(256) term turns the density of y (bin width 1/256) into one of x;
the shift by -0.5 does not change the Jacobian. For rosinality log p_Y = log_p + logdet from
their Glow.forward; for y0ast their forward computes exactly this bpd (the noise is drawn by their
uniform_binning_correction from torch's generator, seeded here).

Prints the train bpd curve (mean of the batches' train bpd since the previous record) and a
one-line summary; images/s is images seen over the whole timed span (build and init included);
--json-out writes everything as JSON. The commit is `git -C CHECKOUT rev-parse HEAD`, else the
contents of CHECKOUT/COMMIT (for a `git archive` extraction), else "unknown".
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

LEVELS, DEPTH, HIDDEN = 2, 16, 128
N_BINS = 256.0
EVAL_BATCH = 500
OURS_PARAMETERS = 876_064


class Port:
    """One port's model and training step, as its train.py does them."""

    name: str
    batch_size: int
    optimizer_settings: dict

    def __init__(self, checkout: str, seed: int) -> None:
        raise NotImplementedError

    def init(self, train_images: torch.Tensor, rng: np.random.Generator) -> int:
        """Their data-dependent init; returns the number of training batches it consumed."""
        raise NotImplementedError

    def step(self, x: torch.Tensor) -> float:
        """One training step on uint8 images `x`; returns the batch's train bits/dim."""
        raise NotImplementedError

    def end_of_epoch(self) -> None:
        pass

    def test_bpd(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Bits/dim per image of uint8 `x` with dequantisation noise `u` in [0, 1)."""
        raise NotImplementedError


class Rosinality(Port):
    name = "rosinality"
    batch_size = 16  # train.py:19
    optimizer_settings = {
        "optimizer": "Adam",
        "lr": 1e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "warmup": "none",
        "grad_clip": "none",
        "source": "train.py:34,135,173",
    }

    def __init__(self, checkout: str, seed: int) -> None:
        sys.path.insert(0, checkout)
        import model as ros  # their model.py

        ros.AffineCoupling.__init__.__defaults__ = (HIDDEN, True)
        np.random.seed(seed)  # their InvConv2dLU draws its init from numpy
        self.model = ros.Glow(1, DEPTH, LEVELS, affine=True, conv_lu=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.dims = 28 * 28
        self.initialised = False

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / N_BINS - 0.5  # train.py:116, n_bits = 8

    def init(self, train_images: torch.Tensor, rng: np.random.Generator) -> int:
        return 0  # their step 0 (train.py:118-124) is the first training step, see step()

    def step(self, x: torch.Tensor) -> float:
        image = self._scaled(x)
        if not self.initialised:
            self.initialised = True
            with torch.no_grad():  # their i == 0: ActNorm init, no optimiser step
                self.model(image + torch.rand_like(image) / N_BINS)
            return math.nan
        log_p, logdet, _ = self.model(image + torch.rand_like(image) / N_BINS)
        logdet = logdet.mean()
        loss = -math.log(N_BINS) * self.dims + logdet + log_p  # their calc_loss, D = 784
        loss = (-loss / (math.log(2) * self.dims)).mean()
        self.model.zero_grad()
        loss.backward()
        self.optimizer.param_groups[0]["lr"] = 1e-4
        self.optimizer.step()
        return loss.item()

    def test_bpd(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        log_p, logdet, _ = self.model(self._scaled(x) + u / N_BINS)
        return -(log_p + logdet - self.dims * math.log(N_BINS)) / (self.dims * math.log(2))


class Y0ast(Port):
    name = "y0ast"
    batch_size = 64  # train.py:395
    n_init_batches = 8  # train.py:421
    warmup_epochs = 5  # train.py:414
    optimizer_settings = {
        "optimizer": "Adamax",
        "lr": 5e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 5e-5,
        "warmup": "LambdaLR min(1, (epoch+1)/5), stepped per epoch",
        "max_grad_clip": 0,
        "max_grad_norm": 0,
        "n_init_batches": 8,
        "source": "train.py:145,147-148,278,376-388,409,414,421",
    }

    def __init__(self, checkout: str, seed: int) -> None:
        sys.path.insert(0, checkout)
        import model as y0  # their model.py (imports their modules.py, utils.py)

        self.model = y0.Glow(
            (28, 28, 1), HIDDEN, DEPTH, LEVELS, 1.0, "invconv", "affine", True, 10, True, False
        )
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=5e-4, weight_decay=5e-5)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda=lambda epoch: min(1.0, (epoch + 1) / self.warmup_epochs)
        )

    @staticmethod
    def _scaled(x: torch.Tensor) -> torch.Tensor:
        return x.float() / N_BINS - 0.5  # datasets.py preprocess, n_bits = 8

    def init(self, train_images: torch.Tensor, rng: np.random.Generator) -> int:
        # islice(train_loader, 8) over a fresh shuffle (train.py:251-272)
        order = rng.permutation(len(train_images))[: self.n_init_batches * self.batch_size]
        self.model.train()
        with torch.no_grad():
            self.model(self._scaled(train_images[torch.from_numpy(order)]), None)
        return 0

    def step(self, x: torch.Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        _, nll, _ = self.model(self._scaled(x), None)
        loss = torch.mean(nll)  # compute_loss
        loss.backward()
        self.optimizer.step()  # max_grad_clip = max_grad_norm = 0: no clipping
        return loss.item()

    def end_of_epoch(self) -> None:
        self.scheduler.step()

    def test_bpd(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # their forward adds the U(0, 1/256) noise itself (uniform_binning_correction), from
        # torch's global generator, which main() seeds before the test: `u` is not used
        del u
        _, bpd, _ = self.model(self._scaled(x), None)
        return bpd


PORTS = {"rosinality": Rosinality, "y0ast": Y0ast}


def commit_of(checkout: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    commit_file = Path(checkout) / "COMMIT"  # written next to a `git archive` extraction
    return commit_file.read_text().strip() if commit_file.is_file() else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", choices=sorted(PORTS))
    parser.add_argument("checkout", help="a checkout of the port's repository")
    parser.add_argument("mnist_dir", type=Path, help="folder of MNIST's gzipped IDX files")
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record-every", type=float, default=5.0, help="minutes between train-bpd records"
    )
    args = parser.parse_args()
    if not (Path(args.checkout) / "model.py").is_file():
        sys.exit(f"no model.py in {args.checkout}: pass a checkout of the {args.port} port")

    from imageflows.data.digits import load_mnist

    warnings.filterwarnings("ignore")  # their deprecated torch.qr / F.sigmoid etc.
    torch.set_num_threads(1)
    train_images = load_mnist("train", args.mnist_dir).images
    test_images = load_mnist("test", args.mnist_dir).images[: args.test_images]
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    start = time.perf_counter()  # model construction and init count
    port = PORTS[args.port](args.checkout, args.seed)
    parameters = sum(p.numel() for p in port.model.parameters())
    print(
        f"{port.name}: L={LEVELS} K={DEPTH} hidden={HIDDEN}, {parameters:,} parameters "
        f"({parameters / OURS_PARAMETERS - 1:+.1%} vs our glow-mnist {OURS_PARAMETERS:,}), "
        f"batch {port.batch_size}, {port.optimizer_settings['optimizer']}",
        flush=True,
    )
    port.init(train_images, rng)
    limit = args.minutes * 60
    drop_last = isinstance(port, Y0ast)
    steps = images = epoch = 0
    curve, window = [], []
    next_record = args.record_every * 60
    done = False
    while not done:
        order = torch.from_numpy(rng.permutation(len(train_images)))
        stop = len(order) - (len(order) % port.batch_size if drop_last else 0)
        for first in range(0, stop, port.batch_size):
            x = train_images[order[first : first + port.batch_size]]
            bpd = port.step(x)
            steps += 1
            images += len(x)
            if not math.isnan(bpd):
                window.append(bpd)
            elapsed = time.perf_counter() - start
            done = elapsed >= limit
            if elapsed >= next_record or done:
                record = {
                    "seconds": round(elapsed, 1),
                    "steps": steps,
                    "images": images,
                    "epoch": epoch,
                    "lr": port.optimizer.param_groups[0]["lr"],
                    "train_bpd": float(np.mean(window)) if window else math.nan,
                }
                curve.append(record)
                window = []
                next_record += args.record_every * 60
                print(
                    f"  {record['seconds']:7.1f}s step {steps:6d} images {images:8d} "
                    f"epoch {epoch} lr {record['lr']:.2e} train bpd {record['train_bpd']:.4f}",
                    flush=True,
                )
            if done:
                break
        else:
            epoch += 1
            port.end_of_epoch()
    train_seconds = time.perf_counter() - start

    port.model.eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 1)  # y0ast's own noise draw
    total = 0.0
    with torch.no_grad():
        for first in range(0, len(test_images), EVAL_BATCH):
            x = test_images[first : first + EVAL_BATCH]
            u = torch.rand(x.shape, generator=generator)
            total += port.test_bpd(x, u).double().sum().item()
    test_bpd = total / len(test_images)

    result = {
        "port": port.name,
        "commit": commit_of(args.checkout),
        "checkout": str(Path(args.checkout).resolve()),
        "architecture": {"L": LEVELS, "K": DEPTH, "hidden": HIDDEN, "coupling": "affine"},
        "parameters": parameters,
        "ours_parameters": OURS_PARAMETERS,
        "optimizer": port.optimizer_settings,
        "batch_size": port.batch_size,
        "minutes": args.minutes,
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "images_seen": images,
        "epochs_completed": epoch,
        "images_per_s": images / train_seconds,
        "train_bpd_curve": curve,
        "test_bpd": test_bpd,
        "test_images": len(test_images),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    print(
        f"{port.name} {result['commit'][:7]}: {parameters:,} params, batch {port.batch_size}, "
        f"{args.minutes:g} min, {steps} steps, {result['images_per_s']:.1f} images/s, "
        f"final train bpd {curve[-1]['train_bpd']:.4f}, test bpd {test_bpd:.4f} "
        f"({len(test_images)} images)"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
