#!/usr/bin/env bash
# Quantizes the default model with each preset and measures what it costs: file size, bits per
# weight, WikiText-2 perplexity and KL against the FP16 file on the same windows, and CoQA
# F1/EM on the first 50 dev stories. Results: one JSON per run under OUT, and a markdown table.
#
#   tools/quality_table.sh OUT_DIR [PRESET ...]     (default: every preset)
# Environment: QRT (binary, default target/release/qrt), WINDOWS (ppl windows, default 40),
# STORIES (CoQA stories, default 50), DATA (shared data folder, default ../shared/data),
# SAMPLES (calibration windows of 512 tokens for GPTQ/AWQ, default 128).
set -euo pipefail
OUT=${1:?usage: tools/quality_table.sh OUT_DIR [PRESET ...]}
shift
QRT=${QRT:-target/release/qrt}
WINDOWS=${WINDOWS:-40}
STORIES=${STORIES:-50}
DATA=${DATA:-../shared/data}
QRT_HOME=${QRT_HOME:-$HOME/.cache/qrt}
mkdir -p "$OUT"
F16="$OUT/fp16.qrt"
[ -f "$F16" ] || "$QRT" convert --in "$QRT_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$F16"
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || mapfile -t PRESETS < <("$QRT" quantize --list-presets | awk '{print $1}')
for p in "${PRESETS[@]}"; do
    m="$OUT/$p.qrt"
    start=$(date +%s.%N)
    "$QRT" quantize --in "$F16" --out "$m" --preset "$p" --calib "$DATA/calib/quac-wiki-passages.txt" --samples "${SAMPLES:-128}" \
        > "$OUT/$p.quantize.log" 2>&1
    end=$(date +%s.%N)
    printf '{"preset": "%s", "quantize_seconds": %.3f}\n' "$p" "$(echo "$end - $start" | bc)" > "$OUT/$p.time.json"
    "$QRT" inspect "$m" > "$OUT/$p.inspect.txt"
    "$QRT" eval ppl --model "$m" --data "$DATA/wikitext-2-raw/wiki.test.raw" --limit-windows "$WINDOWS" \
        --kl-base "$F16" --out "$OUT/$p.ppl.json" > "$OUT/$p.ppl.log" 2>&1
    "$QRT" eval coqa --model "$m" --data "$DATA/coqa/coqa-dev.hf.jsonl" --limit "$STORIES" \
        --out "$OUT/$p.coqa.json" > "$OUT/$p.coqa.log" 2>&1
    echo "$p done"
done
python3 "$(dirname "$0")/quality_table.py" "$OUT"
