#!/usr/bin/env bash
# The GPU recipe (docs/gpu.md): on one CUDA machine, in about 8 minutes, with no network,
#   1. the CUDA-marked tests (tests/test_cuda.py, JUnit XML),
#   2. the bench rows of glow-cifar10 and flowpp-cifar10 at batch 64, fp32 and bf16,
#   3. the first ~2 minutes of training each preset on CIFAR-10 (JPEG q75 folder tree),
#   4. OUT_DIR/summary.md and summary.json.
# Usage: PYTHONPATH=. bash scripts/gpu-recipe.sh OUT_DIR [CIFAR10_DIR]
# CIFAR10_DIR holds train/<class>/*.jpg and test/<class>/*.jpg; without it the script extracts
# ../shared/data/cifar10-jpeg-q75.tar.gz (or shared/data/...) into OUT_DIR/data.
# Environment: DEVICE=cpu checks the plumbing on a CPU in a couple of minutes (tiny models, a
# few steps, 5 images per class; GPUs hidden, so the tests skip with "needs CUDA");
# PYTHON (default python3, else python); BUDGET (seconds for all steps, default 470);
# GLOW_STEPS, FLOWPP_STEPS, TRAIN_CAP (per-run wall-clock cap in seconds).
# A failing step is recorded and the script goes on; every step's output is in OUT_DIR/logs/.
set -uo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 OUT_DIR [CIFAR10_DIR]" >&2
  exit 2
fi
started=$SECONDS
mkdir -p "$1"
out=$(cd "$1" && pwd)
cifar=${2:-}
if [[ -n "$cifar" ]]; then cifar=$(cd "$cifar" && pwd) || exit 2; fi
cd "$(dirname "$0")/.." || exit 2
repo=$PWD
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3 > /dev/null; then PYTHON=python3; else PYTHON=python; fi
fi
device=${DEVICE:-cuda}
budget=${BUDGET:-470}
logs=$out/logs
mkdir -p "$logs" "$out/runs"
steps_file=$out/steps.tsv
printf 'step\tseconds\toutcome\n' > "$steps_file"

if [[ "$device" == cpu ]]; then
  export CUDA_VISIBLE_DEVICES=""  # `imageflows train` uses CUDA whenever torch sees a GPU
  glow_model=(--set model.depth=1 --set model.hidden_channels=8 --set model.levels=2)
  flowpp_model=(--set model.blocks=1 --set model.hidden_channels=8 --set model.components=4
    --set model.heads=2 --set model.dequant_blocks=1 --set model.dequant_context_channels=8)
  bench_glow=(--batch-size 4 --repeats 1 --warmup 0 --sample-n 2)
  bench_flowpp=(--batch-size 4 --repeats 1 --warmup 0 --sample-n 2)
  glow_train=(--set train.steps="${GLOW_STEPS:-4}" --set train.batch_size=8
    --set train.init_batch_size=16 --set train.log_every=1 --set train.eval_every=2
    --set train.checkpoint_every=2 --set train.eval_images=20 --set train.eval_batch_size=20)
  flowpp_train=(--set train.steps="${FLOWPP_STEPS:-2}" --set train.batch_size=4
    --set train.init_batch_size=8 --set train.log_every=1 --set train.eval_every=1
    --set train.checkpoint_every=1 --set train.eval_images=8 --set train.eval_batch_size=8)
  train_cap=${TRAIN_CAP:-120}
  bench_caps=(60 120)  # glow, flowpp
else
  glow_model=()
  flowpp_model=()
  bench_glow=(--batch-size 64 --repeats 3 --warmup 1)
  bench_flowpp=(--batch-size 64 --repeats 2 --warmup 1)
  # TRAIN_MINUTES (1.5) of training time each, then a checkpoint and the final evaluation;
  # the step counts are only upper bounds (docs/gpu.md)
  minutes=(--set train.minutes="${TRAIN_MINUTES:-1.5}")
  glow_train=(--set train.steps="${GLOW_STEPS:-100000}" "${minutes[@]}" --set train.log_every=10
    --set train.eval_every=400 --set train.checkpoint_every=400 --set train.eval_images=500)
  flowpp_train=(--set train.steps="${FLOWPP_STEPS:-100000}" "${minutes[@]}"
    --set train.log_every=5 --set train.eval_every=50 --set train.checkpoint_every=50
    --set train.eval_images=250 --set train.eval_batch_size=250)
  train_cap=${TRAIN_CAP:-140}
  bench_caps=(50 80)
fi

# step NAME CAP STDOUT COMMAND...: run COMMAND under `timeout` (SIGINT at CAP seconds, or
# at what is left of BUDGET, then SIGKILL 15 s later), stderr (and stdout unless STDOUT is a
# file) to logs/NAME.log; record its wall time and outcome in steps.tsv.
step() {
  local name=$1 cap=$2 stdout=$3 left outcome rc begin
  shift 3
  left=$((budget - (SECONDS - started)))
  if ((left < 10)); then
    printf '%s\t0\tskipped: budget of %s s spent\n' "$name" "$budget" >> "$steps_file"
    echo "== $name: skipped, budget spent" >&2
    return
  fi
  ((cap > left)) && cap=$left
  echo "== $name (cap ${cap} s): $*" >&2
  begin=$SECONDS
  {
    echo "# $*"
    echo "# cap ${cap} s, started $(date -u +%FT%TZ)"
  } > "$logs/$name.log"
  if [[ "$stdout" == - ]]; then
    timeout -s INT -k 15 "$cap" "$@" >> "$logs/$name.log" 2>&1
  else
    timeout -s INT -k 15 "$cap" "$@" > "$stdout" 2>> "$logs/$name.log"
  fi
  rc=$?
  case $rc in
    0) outcome=ok ;;
    130) outcome="stopped by the SIGINT at ${cap} s, after a checkpoint (exit 130)" ;;
    124 | 137) outcome="timed out at ${cap} s (exit $rc)" ;;
    *) outcome="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - begin))" "$outcome" >> "$steps_file"
  echo "   $name: $outcome in $((SECONDS - begin)) s" >&2
}

# 0. the machine
{
  echo "device mode: $device"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  else
    echo "nvidia-smi: not available"
  fi
  "$PYTHON" -c 'import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))' 2>&1
  nproc
} > "$logs/environment.log"
cat "$logs/environment.log" >&2

# 1. the CUDA-marked tests
step tests 150 - "$PYTHON" -m pytest -q -rs -m cuda tests/test_cuda.py \
  --junitxml "$out/junit-cuda.xml" -p no:cacheprovider

# 2. the bench rows: one process per row
for precision in fp32 bf16; do
  for preset in glow-cifar10 flowpp-cifar10; do
    if [[ $preset == glow-* ]]; then
      args=("${glow_model[@]}" "${bench_glow[@]}")
      cap=${bench_caps[0]}
    else
      args=("${flowpp_model[@]}" "${bench_flowpp[@]}")
      cap=${bench_caps[1]}
    fi
    name=bench-$preset-b64-$precision
    step "$name" "$cap" "$out/$name.json" "$PYTHON" -m imageflows bench --preset "$preset" \
      --device "$device" --set train.precision="$precision" "${args[@]}" --json
  done
done

# 3. the first minutes of training on CIFAR-10 (JPEG q75)
if [[ -z "$cifar" ]]; then
  for tarball in ../shared/data/cifar10-jpeg-q75.tar.gz shared/data/cifar10-jpeg-q75.tar.gz; do
    [[ -f "$tarball" ]] || continue
    mkdir -p "$out/data"
    if [[ "$device" == cpu ]]; then  # 5 images per class and split
      step extract-cifar10 120 - tar -xzf "$tarball" -C "$out/data" --wildcards \
        'train/*/000[0-4].jpg' 'test/*/000[0-4].jpg'
    else
      step extract-cifar10 120 - tar -xzf "$tarball" -C "$out/data"
    fi
    cifar=$out/data
    break
  done
fi
if [[ -n "$cifar" && -d "$cifar/train" && -d "$cifar/test" ]]; then
  for preset in glow-cifar10 flowpp-cifar10; do
    if [[ $preset == glow-* ]]; then
      args=("${glow_model[@]}" "${glow_train[@]}")
    else
      args=("${flowpp_model[@]}" "${flowpp_train[@]}")
    fi
    rm -rf "$out/runs/$preset"
    step "train-$preset" "$train_cap" - "$PYTHON" -m imageflows train --preset "$preset" \
      --data folder --data-dir "$cifar" --out "$out/runs/$preset" --no-progress "${args[@]}"
  done
  for preset in glow-cifar10 flowpp-cifar10; do
    if [[ -f "$out/runs/$preset/config.json" ]]; then
      step "report-$preset" 60 - "$PYTHON" -m imageflows report "$out/runs/$preset" \
        --out "$out/runs/$preset/report.html"
    fi
  done
else
  printf 'train\t0\tskipped: no CIFAR-10 folder (give CIFAR10_DIR or put the tarball in ../shared/data)\n' \
    >> "$steps_file"
fi

# 4. summary.md and summary.json
total=$((SECONDS - started))
step summary 60 - "$PYTHON" - "$out" "$total" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, total = Path(sys.argv[1]), int(sys.argv[2])
lines = ["# GPU recipe results", ""]
lines += ["```", (out / "logs/environment.log").read_text().strip(), "```", ""]
rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
lines += ["## Steps", "", "| step | wall s | outcome |", "|---|---|---|"]
lines += [f"| {name} | {seconds} | {outcome} |" for name, seconds, outcome in rows]
lines += ["", f"Total wall time before this summary: {total} s.", ""]
summary = {"total_seconds_before_summary": total, "steps": rows}

junit = out / "junit-cuda.xml"
if junit.is_file():
    lines += ["## CUDA tests", "", "| test | outcome |", "|---|---|"]
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = f"{tag}: {(found.get('message') or '').splitlines()[0][:120]}"
        tests.append({"test": case.get("name"), "outcome": outcome})
        lines.append(f"| {case.get('name')} | {outcome} |")
    summary["tests"] = tests
    lines.append("")

lines += ["## Bench (`imageflows bench`, one process per row)", ""]
lines += ["| row | device | train images/s | first step s | peak CUDA MiB | peak RSS MiB |"
          " saved MiB | sample s | round trip | eval s |",
          "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
bench = {}
for path in sorted(out.glob("bench-*.json")):
    try:
        r = json.loads(path.read_text())
    except (ValueError, OSError):
        lines.append(f"| {path.stem} | no result (see logs/{path.stem}.log) |")
        continue
    bench[path.stem] = r
    cuda = r.get("peak_cuda_mib")
    lines.append(
        f"| {path.stem} | {r['device']} | {r['train_images_per_s']:.1f} | "
        f"{r['first_step_seconds']:.2f} | {'-' if cuda is None else f'{cuda:,.0f}'} | "
        f"{r['peak_rss_mib']:,.0f} | {r['saved_for_backward_mib']:,.0f} | "
        f"{r['sample_seconds']:.3f} | {r['roundtrip_max_abs']} | {r['eval_seconds']:.3f} |"
    )
summary["bench"] = bench

lines += ["", "## Training (CIFAR-10, JPEG q75)", ""]
lines += ["| run | steps logged | median images/s | last train bpd | test bpd (step) | time s |",
          "|---|---|---|---|---|---|"]  # fmt: skip
runs, curves = {}, []
for run in sorted((out / "runs").glob("*")):
    metrics = run / "metrics.jsonl"
    records = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # a line cut short by the wall-clock cap
    train = [r for r in records if r.get("train_bpd") is not None]
    test = [r for r in records if "test_bpd" in r]
    speeds = sorted(r["images_per_s"] for r in train if r.get("images_per_s"))
    runs[run.name] = {
        "train": [{k: r.get(k) for k in ("step", "train_bpd", "images_per_s", "time")}
                  for r in train],
        "test": [{"step": r["step"], "test_bpd": r["test_bpd"]} for r in test],
        "median_images_per_s": speeds[len(speeds) // 2] if speeds else None,
    }  # fmt: skip
    last = train[-1] if train else {}
    tests = ", ".join(f"{r['test_bpd']:.3f} ({r['step']})" for r in test) or "-"
    median = f"{speeds[len(speeds) // 2]:.1f}" if speeds else "-"
    lines.append(
        f"| {run.name} | {last.get('step', 0)} | {median} | "
        f"{last.get('train_bpd', float('nan')):.3f} | {tests} | {last.get('time', 0):.0f} |"
    )
    if train:
        curve = ", ".join(f"{r['step']}: {r['train_bpd']:.3f}" for r in train[-8:])
        curves.append(f"- {run.name}, last train bits/dim by step: {curve}")
summary["runs"] = runs
lines += ["", *curves]
lines += ["", "bits/dim on CIFAR-10 (JPEG q75) are not comparable with the papers' CIFAR-10.", ""]
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
(out / "summary.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF

total=$((SECONDS - started))
echo "Total wall time: $total s" | tee -a "$out/summary.md" >&2
failed=$(awk -F'\t' 'NR > 1 && $3 != "ok" {n++} END {print n + 0}' "$steps_file")
echo "steps not ok: $failed (see $steps_file and $logs/)" >&2
