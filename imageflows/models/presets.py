"""Named configurations of the papers' setups (DESIGN section 3)."""

from __future__ import annotations

from ..config import Config, DataConfig, ModelConfig, TrainConfig

PRESETS: dict[str, Config] = {
    # the default job: a small Glow on scikit-learn's 8x8 digits, a few minutes on 2 CPU cores
    "glow-digits": Config(
        model=ModelConfig(
            image_shape=(1, 8, 8), num_levels=17, levels=2, depth=8, hidden_channels=64
        ),
        data=DataConfig(name="digits"),
        train=TrainConfig(
            steps=2000,
            batch_size=64,
            lr=2e-3,
            warmup_steps=100,
            eval_every=500,
            checkpoint_every=500,
            init_batch_size=512,
        ),
    ),
    # MNIST at 28x28 (28 = 4·7, so at most L=2)
    "glow-mnist": Config(
        model=ModelConfig(
            image_shape=(1, 28, 28), num_levels=256, levels=2, depth=16, hidden_channels=128
        ),
        data=DataConfig(name="mnist"),
        train=TrainConfig(
            steps=20000,
            batch_size=64,
            lr=1e-3,
            warmup_steps=500,
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
}


def preset_config(name: str) -> Config:
    """The `Config` of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
