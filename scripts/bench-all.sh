#!/usr/bin/env bash
# Every speed and memory figure of the README's results table, one config per process (peak
# RSS is per process), run one after another: let nothing else run meanwhile. Writes
# docs/bench/NAME.json; ONLY=name1,name2 runs a subset. About 25 minutes on 2 CPU cores; on a
# machine with CUDA it adds the GPU rows (gpu-*).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench
mkdir -p "$out"
glow=(--preset glow-cifar10 --set model.depth=8 --set model.hidden_channels=128 --batch-size 16)
wide=(--preset glow-cifar10 --set model.depth=8 --set model.hidden_channels=512 --batch-size 16)
flowpp=(--preset flowpp-cifar10 --set model.hidden_channels=32 --set model.blocks=2 --batch-size 16)
bf16=(--set train.precision=bf16)
compiled=(--set train.compile=true)
memsave=(--set model.memory_saving=true)

run() {  # run NAME ARGS...: one `imageflows bench` process, its JSON in docs/bench/NAME.json
  local name=$1
  shift
  if [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]]; then return; fi
  echo "== $name: imageflows bench $*" >&2
  imageflows bench "$@" --json > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
}

run glow-k8-fp32 "${glow[@]}"
run glow-k8-fp32-compile "${glow[@]}" "${compiled[@]}"
run glow-k8-fp32-memsave "${glow[@]}" "${memsave[@]}"
run glow-k8-bf16 "${glow[@]}" "${bf16[@]}"
run glow-k8-bf16-compile "${glow[@]}" "${bf16[@]}" "${compiled[@]}"
run glow-w512-k8-fp32 "${wide[@]}"
run glow-w512-k8-bf16 "${wide[@]}" "${bf16[@]}"
run glow-w512-k8-bf16-compile "${wide[@]}" "${bf16[@]}" "${compiled[@]}"
for k in 4 32; do
  run "glow-k$k-saved" "${glow[@]}" --set model.depth=$k --repeats 3 --warmup 1
  run "glow-k$k-saved-memsave" "${glow[@]}" --set model.depth=$k "${memsave[@]}" --repeats 3 --warmup 1
done
run flowpp-attn "${flowpp[@]}"
run flowpp-noattn "${flowpp[@]}" --set model.attention=false
run mixture-inverse --mixture-inverse
# the papers' full-size presets, few repeats (a Flow++ step at batch 4 takes seconds here)
run glow-cifar10-paper --preset glow-cifar10 --batch-size 16 --repeats 3 --warmup 1
run flowpp-cifar10-paper --preset flowpp-cifar10 --batch-size 4 --repeats 2 --warmup 1
# the issue's GPU rows: both papers' presets at batch 64, float32 and bf16 (only where CUDA is)
if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  for precision in fp32 bf16; do
    for preset in glow-cifar10 flowpp-cifar10; do
      run "gpu-$preset-b64-$precision" --preset "$preset" --batch-size 64 --device cuda \
        --set train.precision="$precision" --repeats 5 --warmup 2
    done
  done
fi
