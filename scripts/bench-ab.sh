#!/usr/bin/env bash
# Before/after benchmark pairs: the same `imageflows bench` rows from two checkouts, run in
# alternating processes (A, B, A, B, ...), nothing else running. Usage:
#   scripts/bench-ab.sh BEFORE_CHECKOUT AFTER_CHECKOUT OUT_DIR [PAIRS]
# Writes OUT_DIR/ROW-{before,after}-N.json and prints one line per process; ROWS="glow-k8 ..."
# runs a subset.
set -euo pipefail
before=$1 after=$2 out=$3 pairs=${4:-3}
mkdir -p "$out"
glow=(--preset glow-cifar10 --set model.depth=8 --set model.hidden_channels=128 --batch-size 16)
flowpp=(--preset flowpp-cifar10 --set model.hidden_channels=32 --set model.blocks=2 --batch-size 16)
memsave=(--set model.memory_saving=true --repeats 3 --warmup 1)
rows=(${ROWS:-glow-k8 flowpp-attn glow-k4-memsave glow-k32-memsave})
args() {
  case $1 in
    glow-k8) echo "${glow[@]}" ;;
    flowpp-attn) echo "${flowpp[@]}" ;;
    glow-k4-memsave) echo "${glow[@]} --set model.depth=4 ${memsave[@]}" ;;
    glow-k32-memsave) echo "${glow[@]} --set model.depth=32 ${memsave[@]}" ;;
  esac
}
for row in "${rows[@]}"; do
  for n in $(seq 1 "$pairs"); do
    for side in before after; do
      dir=$before; [[ $side == after ]] && dir=$after
      # shellcheck disable=SC2046
      (cd "$dir" && PYTHONPATH="$dir" python -m imageflows bench $(args "$row") --json) \
        > "$out/$row-$side-$n.json"
      python - "$out/$row-$side-$n.json" "$row" "$side" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ("train_images_per_s", "sample_seconds", "peak_rss_mib", "saved_for_backward_mib")
print(sys.argv[2], sys.argv[3], *(f"{k}={r.get(k):.4g}" for k in keys if r.get(k) is not None))
PY
    done
  done
done
