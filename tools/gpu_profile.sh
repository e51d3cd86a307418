#!/bin/bash
# Where the time of a prefill and of decode steps goes, per kernel, from the hardware counters:
#
#   tools/gpu_profile.sh QRT_BINARY MODEL.qrt OUT_DIR [KERNEL_REGEX]
#
# Runs `qrt bench --batch 1 --prompt-len 512 --gen-len 4` under Nsight Compute (clocks left
# alone, caches not flushed, graph nodes profiled one by one) with the speed-of-light, memory,
# occupancy and warp-state sections, writes the raw CSV to OUT_DIR/ncu.csv, and prints one line
# per kernel name: launches, median duration, and the median of each section's headline
# figures (DRAM, L2, L1 and SM throughput as % of peak, achieved occupancy, cycles per issued
# instruction). Every kernel of the prefill and the first decode steps is profiled unless
# KERNEL_REGEX narrows it (e.g. 'gemm|attn'). Needs ncu on the PATH (the GPU machine has it).
set -u
Q=${1:?usage: tools/gpu_profile.sh QRT_BINARY MODEL.qrt OUT_DIR [KERNEL_REGEX]}
MODEL=${2:?usage: tools/gpu_profile.sh QRT_BINARY MODEL.qrt OUT_DIR [KERNEL_REGEX]}
OUT=${3:?usage: tools/gpu_profile.sh QRT_BINARY MODEL.qrt OUT_DIR [KERNEL_REGEX]}
FILTER=${4:-.}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
ncu --clock-control none --cache-control none --graph-profiling node \
    -k "regex:$FILTER" -c 400 --csv --page details \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section WarpStateStats \
    "$Q" bench --model "$MODEL" --device cuda --batch 1 --prompt-len 512 --gen-len 4 \
    --warmup 0 --iters 1 --out "$OUT/bench.json" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu: exit $? ($(grep -c '^"' "$OUT/ncu.csv") rows)"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, statistics, sys
from collections import defaultdict

wanted = {
    "Duration": "us",
    "DRAM Throughput": "dram%",
    "L2 Cache Throughput": "l2%",
    "L1/TEX Cache Throughput": "l1%",
    "Compute (SM) Throughput": "sm%",
    "Achieved Occupancy": "occ%",
    "Warp Cycles Per Issued Instruction": "cpi",
}
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
header = next((r for r in rows if r[0] == "ID"), None)
if header is None:
    sys.exit("no ncu table in the output (see ncu.err)")
col = {name: i for i, name in enumerate(header)}
launches = defaultdict(set)
values = defaultdict(lambda: defaultdict(list))
for r in rows:
    if r is header or len(r) != len(header) or r[0] == "ID":
        continue
    name = r[col["Kernel Name"]].split("(")[0]
    launches[name].add(r[col["ID"]])
    metric = r[col["Metric Name"]]
    if metric in wanted:
        value = r[col["Metric Value"]].replace(",", "")
        unit = r[col["Metric Unit"]]
        try:
            v = float(value)
        except ValueError:
            continue
        if metric == "Duration":
            v *= {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1.0)
        values[name][wanted[metric]].append(v)
keys = list(wanted.values())
print(f"{'kernel':<34}{'n':>5}" + "".join(f"{k:>8}" for k in keys) + f"{'total us':>10}")
order = sorted(values, key=lambda n: -sum(values[n]["us"]))
for name in order:
    v = values[name]
    cells = "".join(
        f"{statistics.median(v[k]):>8.1f}" if v[k] else f"{'-':>8}" for k in keys
    )
    print(f"{name[:33]:<34}{len(launches[name]):>5}{cells}{sum(v['us']):>10.1f}")
PY
