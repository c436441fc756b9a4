#!/usr/bin/env python
"""The MNIST recipe study: variants of the `glow-mnist` recipe trained at one CPU budget.

    python scripts/recipe-study.py MNIST_DIR OUT [--minutes 10] [--jobs 2] [--only a,b]
        [--base study|adopted] [--json docs/bench/recipe-mnist.json]

Each variant is a set of `--set` overrides on the `glow-mnist` preset. Its budget is the same
wall-clock time of one CPU thread for every variant: the script first times each variant with
`imageflows bench` (one thread, nothing else running), then trains it for

    steps = (minutes · 60 − first step) · images/s / batch size

steps with `imageflows train`, `--jobs` variants at a time, each on one thread. So a faster
variant (a narrower net, `train.compile`) gets more steps, and a larger batch fewer. Each run
ends with the test bits/dim on the first 2,000 MNIST test images (EMA weights), which is the
figure of the table. Reruns skip variants whose run directory already holds a final model;
`--only` runs a chosen subset and the JSON holds every finished row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from typing import NamedTuple


class Recipe(NamedTuple):
    question: str  # which question of the study the row answers
    overrides: tuple[str, ...]  # `--set` strings on the glow-mnist preset


RECIPES: dict[str, Recipe] = {
    "base": Recipe("the round's base recipe (BASES; clip 50, EMA 0.999)", ()),
    "lr-2e-3": Recipe("learning rate", ("train.lr=2e-3",)),
    "lr-5e-4": Recipe("learning rate", ("train.lr=5e-4",)),
    "warmup-100": Recipe("warm-up", ("train.warmup_steps=100",)),
    "batch-32": Recipe("batch size", ("train.batch_size=32",)),
    "batch-128": Recipe("batch size", ("train.batch_size=128",)),
    "no-clip": Recipe("gradient clipping", ("train.grad_clip=0",)),
    "clip-500": Recipe("gradient clipping", ("train.grad_clip=500",)),
    "additive": Recipe("coupling", ("model.coupling=additive",)),
    "wide-K8-w192": Recipe("width vs depth", ("model.depth=8", "model.hidden_channels=192")),
    "deep-K32-w96": Recipe("width vs depth", ("model.depth=32", "model.hidden_channels=96")),
    "levels-1": Recipe("levels", ("model.levels=1",)),  # 28x28 allows L ≤ 2
    "clip-10": Recipe("gradient clipping", ("train.grad_clip=10",)),
    "ema-0": Recipe("EMA decay", ("train.ema=0",)),
    "ema-0.99": Recipe("EMA decay", ("train.ema=0.99",)),
    "seed-1": Recipe("seed-to-seed spread", ("train.seed=1",)),
    "lr-2e-3-seed-1": Recipe("learning rate (second seed)", ("train.lr=2e-3", "train.seed=1")),
    "compile": Recipe("train.compile", ("train.compile=true",)),
    "variational": Recipe("dequantization", ("model.dequantization=variational",)),
}
EVAL_IMAGES = 2000
# The recipes a round of the study starts from, given explicitly so that every row's command
# reproduces it whatever the preset becomes: "study" is glow-mnist before the study, "adopted"
# the winners of its first round (batch 32, warm-up 100) at the learning rate of then (the
# second round moved the preset to 2e-3).
BASES: dict[str, tuple[str, ...]] = {
    "study": ("train.batch_size=64", "train.warmup_steps=500", "train.lr=1e-3"),
    "adopted": ("train.batch_size=32", "train.warmup_steps=100", "train.lr=1e-3"),
}


def sets(base: tuple[str, ...], recipe: Recipe) -> list[str]:
    """`--set` arguments of the round's base recipe, then of the variant (the later wins)."""
    return [arg for o in (*base, *recipe.overrides) for arg in ("--set", o)]


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def speed_overrides(recipe: Recipe) -> tuple[str, ...]:
    """The overrides that change the cost of a step: the model's, the batch, compilation.
    Variants that differ only in the others share one timing (this machine's speed drifts by
    ±15% between identical runs, so separate timings would give them different budgets)."""
    return tuple(
        o
        for o in recipe.overrides
        if not o.startswith("train.") or o.startswith(("train.batch_size=", "train.compile="))
    )


def bench(base: tuple[str, ...], overrides: tuple[str, ...]) -> dict:
    """`imageflows bench` of the variant on one thread: its images/s, first step, parameters."""
    all_overrides = (*base, *overrides)
    batch = [o.partition("=")[2] for o in all_overrides if o.startswith("train.batch_size=")]
    cmd = ["imageflows", "bench", "--preset", "glow-mnist", "--threads", "1", "--json"]
    cmd += ["--repeats", "5", "--warmup", "2", "--batch-size", batch[-1]]
    others = [o for o in all_overrides if not o.startswith("train.batch_size=")]
    cmd += [arg for o in others for arg in ("--set", o)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env1()).stdout
    return json.loads(out)


def train(
    name: str, base: tuple[str, ...], recipe: Recipe, steps: int, mnist: str, out: Path
) -> dict:
    run = out / name
    cmd = ["imageflows", "train", "--preset", "glow-mnist", "--data-dir", mnist]
    cmd += ["--out", str(run), "--no-progress", *sets(base, recipe)]
    cmd += ["--set", f"train.steps={steps}", "--set", f"train.eval_every={steps}"]
    cmd += ["--set", f"train.eval_images={EVAL_IMAGES}", "--set", "train.keep_checkpoints=1"]
    cmd += ["--set", f"train.checkpoint_every={steps}"]
    if not (run / "model.safetensors").exists():
        log = (out / f"{name}.log").open("w")
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env1())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in records if "test_bpd" in r]
    trains = [r for r in records if "train_bpd" in r]
    norms = sorted(r["grad_norm"] for r in trains)
    return {
        "command": " ".join(cmd[:5] + ["MNIST_DIR", "--out", f"OUT/{name}"] + cmd[8:]),
        "steps": steps,
        "train_minutes": trains[-1]["time"] / 60,
        "test_bpd": tests[-1]["test_bpd"],
        "median_grad_norm": norms[len(norms) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist")
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--base", choices=BASES, default="study", help="the round's base recipe")
    parser.add_argument("--only", default=",".join(RECIPES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    base = BASES[args.base]
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.json or args.out / "recipe-mnist.json"
    table = json.loads(table_path.read_text()) if table_path.exists() else {}

    cache = args.out / "timings.json"  # each variant's timing, kept as soon as measured
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    plans, timings = {}, {}
    for name in names:  # timed one at a time, nothing else running
        key = speed_overrides(RECIPES[name])
        if name in saved:
            timings.setdefault(key, saved[name])
        if key not in timings:
            timings[key] = bench(base, key)
        timing = saved[name] = timings[key]
        cache.write_text(json.dumps(saved, indent=1) + "\n")
        run_config = args.out / name / "config.json"
        if run_config.exists():  # a run already made keeps its own length
            steps = json.loads(run_config.read_text())["train"]["steps"]
        else:
            budget_s = args.minutes * 60 - timing["first_step_seconds"]
            steps = int(budget_s * timing["train_images_per_s"] / timing["batch_size"])
        plans[name] = (timing, steps)
        print(f"{name}: {timing['train_images_per_s']:.1f} img/s -> {steps} steps", flush=True)

    lock = Lock()

    def one(name: str) -> None:
        timing, steps = plans[name]
        result = train(name, base, RECIPES[name], steps, args.mnist, args.out)
        with lock:
            table[name] = {
                "question": RECIPES[name].question,
                "overrides": list(RECIPES[name].overrides),
                "parameters": timing["parameters"],
                "bench_images_per_s": timing["train_images_per_s"],
                "bench": timing,
                "cpu": cpu_name(),
                "budget_minutes": args.minutes,
                "base": list(base),
                **result,
            }
            table_path.write_text(json.dumps(table, indent=1) + "\n")  # partial tables survive
        print(f"{name}: {result['test_bpd']:.4f} bits/dim after {steps} steps", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, names))
    if args.md:
        args.md.write_text(markdown(table))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown CPU"


def markdown(table: dict) -> str:
    """The rows, best test bits/dim first, with the command of each."""
    rows = sorted(table.items(), key=lambda item: item[1]["test_bpd"])
    lines = [
        "| variant | question | overrides | parameters | images/s | steps | minutes | "
        "test bits/dim | median grad norm |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        overrides = ", ".join(f"`{o}`" for o in r["overrides"]) or "—"
        lines.append(
            f"| {name} | {r['question']} | {overrides} | {r['parameters'] / 1e6:.2f}M | "
            f"{r['bench_images_per_s']:.1f} | {r['steps']} | {r['train_minutes']:.1f} | "
            f"{r['test_bpd']:.4f} | {r['median_grad_norm']:.1f} |"
        )
    lines += [
        "",
        "minutes: training time at the last logged step (every 50 steps), before the final "
        "evaluation.",
        "",
        "Commands (MNIST_DIR: the folder of the MNIST IDX files; OUT: the study's folder):",
        "",
    ]
    lines += [f"- {name}: `{r['command']}`" for name, r in rows]
    cpus = sorted({r.get("cpu", "unknown CPU") for _, r in rows})
    lines += ["", f"CPU: {', '.join(cpus)}; one thread per run, two runs at a time.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
