"""Named configurations of the papers' setups (DESIGN section 3)."""

from __future__ import annotations

from ..config import Config, DataConfig, ModelConfig, TrainConfig


def _flowpp(
    image_shape: tuple[int, int, int],
    layout: str,
    hidden_channels: int,
    blocks: int,
    components: int,
    dropout: float,
    permutation: str = "conv1x1",
    attention: bool = True,
) -> ModelConfig:
    """Flow++ with mixture couplings, 4 attention heads (or none) and variational
    dequantization."""
    return ModelConfig(
        type="flowpp",
        image_shape=image_shape,
        num_levels=256,
        layout=layout,
        hidden_channels=hidden_channels,
        blocks=blocks,
        components=components,
        heads=4,
        attention=attention,
        dropout=dropout,
        coupling="mixture",
        permutation=permutation,
        dequantization="variational",
    )


PRESETS: dict[str, Config] = {
    # the default job: a small Glow on scikit-learn's 8x8 digits, a few minutes on 2 CPU cores
    "glow-digits": Config(
        model=ModelConfig(
            image_shape=(1, 8, 8), num_levels=17, levels=2, depth=8, hidden_channels=64
        ),
        data=DataConfig(name="digits"),
        train=TrainConfig(
            steps=600,  # ~27 epochs of 1,437 images; longer runs overfit this tiny set
            batch_size=64,
            lr=2e-3,
            warmup_steps=100,
            eval_every=200,
            checkpoint_every=200,
            init_batch_size=512,
        ),
    ),
    # MNIST at 28x28 (28 = 4·7, so at most L=2)
    "glow-mnist": Config(
        model=ModelConfig(
            image_shape=(1, 28, 28), num_levels=256, levels=2, depth=16, hidden_channels=128
        ),
        data=DataConfig(name="mnist"),
        train=TrainConfig(  # batch 32, warm-up 100, lr 2e-3: the winners of docs/recipe-mnist.md
            steps=40000,
            batch_size=32,
            lr=2e-3,
            warmup_steps=100,
            eval_every=1000,
            eval_images=2000,
            checkpoint_every=1000,
        ),
    ),
    # the paper's CIFAR-10 model (Glow Table 2 / openai/glow hps): L=3, K=32, 512 channels
    "glow-cifar10": Config(
        model=ModelConfig(
            image_shape=(3, 32, 32), num_levels=256, levels=3, depth=32, hidden_channels=512
        ),
        data=DataConfig(name="cifar10"),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=64,
            lr=1e-3,
            warmup_steps=800,
            eval_every=5000,
            eval_images=0,
            checkpoint_every=5000,
        ),
    ),
    # the paper's qualitative CelebA-HQ setup: 256x256, 5 bits, additive coupling, L=6, K=32
    "glow-celeba-5bit": Config(
        model=ModelConfig(
            image_shape=(3, 256, 256),
            num_levels=32,
            levels=6,
            depth=32,
            hidden_channels=512,
            coupling="additive",
        ),
        data=DataConfig(name="folder"),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=4,
            lr=1e-3,
            warmup_steps=800,
            eval_every=5000,
            eval_images=1000,
            checkpoint_every=5000,
            init_batch_size=64,
        ),
    ),
    # Flow++ on MNIST, small enough for a CPU budget (1.25M parameters). No attention: on MNIST
    # it gained 0.01 bits/dim for twice the cost of a step (docs/ablation-mnist.md); batch 32
    # and a short warm-up, as the Glow recipe study found (docs/recipe-mnist.md); the recipe of
    # the shipped runs/flowpp-mnist-long
    "flowpp-mnist": Config(
        model=_flowpp((1, 28, 28), "4cb,sq,2ch,3cb", 32, 2, 8, dropout=0.0, attention=False),
        data=DataConfig(name="mnist"),
        train=TrainConfig(
            steps=20000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=200,
            grad_clip=1.0,
            eval_every=1000,
            eval_images=2000,
            checkpoint_every=1000,
            init_batch_size=256,
        ),
    ),
    # the paper's CIFAR-10 model: 31,527,736 parameters, the official run_cifar.py's 31,443,440
    # plus weight-norm gains and one 1x1 convolution over all channels per step (it has one per
    # half); Adam 3e-4 after 2000 warm-up steps, batch 64, gradient clip 1, EMA 0.999
    "flowpp-cifar10": Config(
        model=_flowpp((3, 32, 32), "4cb,sq,2ch,3cb", 96, 10, 32, dropout=0.2),
        data=DataConfig(name="cifar10"),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=64,
            lr=3e-4,
            warmup_steps=2000,
            grad_clip=1.0,
            eval_every=5000,
            eval_images=0,
            checkpoint_every=5000,
            init_batch_size=128,
        ),
    ),
    # the main flow of the official imagenet32_official.py (128 filters, 20 blocks, no 1x1
    # convolutions) with the CIFAR-10 dequantizer and conditioner: 130.4M parameters where the
    # official code has 169.0M (its dequantizer has 8 couplings of 8 blocks and a deep context
    # network, its conditioners a concat-ELU before the output convolution)
    "flowpp-imagenet32": Config(
        model=_flowpp((3, 32, 32), "7cb,sq,3ch,3cb", 128, 20, 32, 0.0, permutation="none"),
        data=DataConfig(name="folder"),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=5000,
            grad_clip=1.0,
            eval_every=5000,
            eval_images=10000,
            checkpoint_every=5000,
            init_batch_size=32,
        ),
    ),
    # the main flow of the official imagenet64_official.py (96 filters, 16 blocks, 4 logistics,
    # no 1x1 convolutions), CIFAR-10 dequantizer and conditioner: 62.0M parameters, official 73.5M
    "flowpp-imagenet64": Config(
        model=_flowpp(
            (3, 64, 64), "sq,4cb,sq,2ch,2cb,sq,2ch,2cb", 96, 16, 4, 0.0, permutation="none"
        ),
        data=DataConfig(name="folder"),
        train=TrainConfig(
            steps=1_000_000,
            batch_size=72,
            lr=4e-4,
            warmup_steps=10000,
            grad_clip=1.0,
            eval_every=5000,
            eval_images=10000,
            checkpoint_every=5000,
            init_batch_size=72,
        ),
    ),
}


def preset_config(name: str) -> Config:
    """The `Config` of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
