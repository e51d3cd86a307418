#!/bin/bash
# A change against its base on the GPU machine: the change's selftest, then both binaries'
# decode and prefill figures on the same synthetic models, alternating, side by side.
#
#   tools/gpu_ab.sh BASE_BINARY NEW_BINARY OUT_DIR
#
# Build both on the CPU machine (e.g. main and a branch: `cargo build --release`, copy and
# strip each binary into a git-ignored folder); one device call carries at most 64 MiB, so
# strip them (~24 MB each). Prints, per model and batch size, decode ms/step and prefill ms of
# BASE and NEW from `qrt bench --iters 3` (medians), each run twice in the order BASE, NEW,
# BASE, NEW; logs and JSON go to OUT_DIR. Environment: QRT_AB_CONFIGS (default
# "llama-3.2-1b smollm2-135m llama-3.1-8b"), QRT_AB_DEVICE (default cuda), QRT_AB_GEN (decode
# steps, default 128), QRT_AB_PROMPT (default 512), QRT_AB_SELFTEST=0 to skip the selftest.
set -u
usage="usage: tools/gpu_ab.sh BASE_BINARY NEW_BINARY OUT_DIR"
BASE=${1:?$usage}
NEW=${2:?$usage}
OUT=${3:?$usage}
CONFIGS=${QRT_AB_CONFIGS:-llama-3.2-1b smollm2-135m llama-3.1-8b}
DEVICE=${QRT_AB_DEVICE:-cuda}
GEN=${QRT_AB_GEN:-128}
PROMPT=${QRT_AB_PROMPT:-512}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ "${QRT_AB_SELFTEST:-1}" != 0 ]; then
    "$NEW" selftest --device "$DEVICE" > "$OUT/selftest.log" 2>&1
    echo "selftest (NEW): exit $? ($(grep -c ' ok$' "$OUT/selftest.log") ok," \
        "$(grep -c FAIL "$OUT/selftest.log") FAIL)"
    grep FAIL "$OUT/selftest.log" | head -20
fi

# bench BINARY TAG CONFIG BATCHES RUN: one `qrt bench`, its table rows kept as
# "TAG CONFIG RUN batch prefill_ms decode_ms" lines in $OUT/rows.
bench() {
    local log="$OUT/bench-$2-$3-$5.log"
    "$1" bench --model "$TMP/$3.qrt" --device "$DEVICE" --batch "$4" --iters 3 \
        --prompt-len "$PROMPT" --gen-len "$GEN" --out "$OUT/bench-$2-$3-$5.json" > "$log" 2>&1 ||
        { echo "bench $2 $3: exit $? (see $log)"; return; }
    # Table rows: batch prompt gen prefill ± spread decode ± spread ...
    awk -v tag="$2" -v cfg="$3" -v run="$5" \
        '/^batch/ {on = 1; next} on && $1 ~ /^[0-9]+$/ {print tag, cfg, run, $1, $4, $7}' \
        "$log" >> "$OUT/rows"
}

: > "$OUT/rows"
for c in $CONFIGS; do
    "$NEW" init --config "$c" --random --out "$TMP/$c.qrt" > /dev/null 2>&1 ||
        { echo "init $c failed"; continue; }
    batches=1,4,8
    [ "$c" = llama-3.1-8b ] && batches=1,8
    for run in 1 2; do
        bench "$BASE" base "$c" "$batches" "$run"
        bench "$NEW" new "$c" "$batches" "$run"
    done
    rm -f "$TMP/$c.qrt"
done

echo
echo "decode ms/step and prefill ms (two runs each; NEW/BASE of the better runs)"
awk '
    { key = $2 " " $4; if (!(key in seen)) { seen[key] = 1; order[n++] = key }
      d = $1 "d" key; p = $1 "p" key
      if (!(d in best) || $6 < best[d]) best[d] = $6
      if (!(p in best) || $5 < best[p]) best[p] = $5
      runs[$1 "r" key] = runs[$1 "r" key] " " $6 }
    END {
      printf "%-14s %5s  %-17s %-17s %7s  %8s %8s %7s\n", "model", "batch", "decode base", \
             "decode new", "new/base", "pre base", "pre new", "new/base"
      for (i = 0; i < n; i++) {
        k = order[i]; split(k, f, " ")
        printf "%-14s %5s  %-17s %-17s %7.3f  %8.3f %8.3f %7.3f\n", f[1], f[2], \
               runs["baser" k], runs["newr" k], best["newd" k] / best["based" k], \
               best["basep" k], best["newp" k], best["newp" k] / best["basep" k]
      }
    }' "$OUT/rows"
