#!/bin/bash
# The standard run on the GPU machine: correctness first, then speed at real shapes.
#
#   tools/gpu_check.sh QRT_BINARY OUT_DIR [MODEL.qrt ...]
#
# Runs `qrt selftest --device cuda` (with each MODEL for the end-to-end logits check),
# `qrt bench kernels`, and `qrt bench` on synthetic Llama-3.2-1B and SmolLM2-135M models (and
# Llama-3.1-8B unless QRT_SKIP_8B=1), writing logs and JSON to OUT_DIR and printing a short
# summary last. Build the binary on the CPU machine (cargo build --release); on the GPU machine
# the CUDA libraries come from /usr/local/cuda.
set -u
Q=${1:?usage: tools/gpu_check.sh QRT_BINARY OUT_DIR [MODEL.qrt ...]}
OUT=${2:?usage: tools/gpu_check.sh QRT_BINARY OUT_DIR [MODEL.qrt ...]}
shift 2
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

models=()
for m in "$@"; do models+=(--model "$m"); done
"$Q" selftest --device cuda "${models[@]}" > "$OUT/selftest.log" 2>&1
echo "selftest: exit $? ($(grep -c ' ok$' "$OUT/selftest.log") ok, $(grep -c FAIL "$OUT/selftest.log") FAIL)"
grep FAIL "$OUT/selftest.log" | head -20

"$Q" bench kernels --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "bench kernels: exit $?"

configs=(llama-3.2-1b smollm2-135m)
[ "${QRT_SKIP_8B:-0}" = 1 ] || configs+=(llama-3.1-8b)
for c in "${configs[@]}"; do
    "$Q" init --config "$c" --random --out "$TMP/$c.qrt" > /dev/null 2>&1 || { echo "init $c failed"; continue; }
    "$Q" bench --model "$TMP/$c.qrt" --device cuda --batch 1,4,8 --iters 3 \
        --out "$OUT/bench-$c.json" > "$OUT/bench-$c.log" 2>&1
    echo "bench $c: exit $?"
    rm -f "$TMP/$c.qrt"
done

echo
for c in "${configs[@]}"; do
    echo "== $c"
    grep -A5 "^batch" "$OUT/bench-$c.log" | grep -v "^--" | head -5
done
