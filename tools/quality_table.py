#!/usr/bin/env python3
"""Prints the markdown table of tools/quality_table.sh's results directory.

    python3 tools/quality_table.py OUT_DIR
"""
import json
import os
import sys

ORDER = ["fp16_baseline", "bnb_8bit", "bnb_4bit_nf4", "bnb_4bit_fp4", "bnb_4bit_nf4_no_double",
         "bnb_4bit_nf4_bf16", "gptq_4bit_g128", "gptq_4bit_g32", "gptq_3bit_g128", "awq_4bit_g128",
         "rtn_4bit_g128"]


def main():
    out = sys.argv[1]
    present = [f[:-len(".ppl.json")] for f in os.listdir(out) if f.endswith(".ppl.json")]
    presets = [p for p in ORDER if p in present] + sorted(p for p in present if p not in ORDER)
    print("| preset | file MB | bits/weight (whole file) | bits/weight (quantized layers) | WikiText-2 ppl | KL vs FP16 (mean ± se) | KL p99 | top-1 agree | CoQA F1 [95% CI] | CoQA EM | quantize s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in presets:
        load = lambda suffix: json.load(open(os.path.join(out, p + suffix)))
        ppl, coqa, t = load(".ppl.json")["summary"], load(".coqa.json")["summary"], load(".time.json")
        inspect = open(os.path.join(out, p + ".inspect.txt")).read().splitlines()
        total = [l for l in inspect if l.startswith("total")][0].split()
        rows = [l.split() for l in inspect if l and l.split()[0] in ("nf4", "fp4", "int8_rowwise", "gptq", "awq")]
        quant_bpw = f"{float(rows[0][-1]):.2f}" if rows else "16.00"
        size = os.path.getsize(os.path.join(out, p + ".qrt")) / 1e6
        kl = ppl["kl"]
        print(f"| {p} | {size:.1f} | {float(total[-1]):.2f} | {quant_bpw} | {ppl['ppl']:.3f} ± {ppl['ppl_stderr']:.3f} "
              f"| {kl['mean']:.4f} ± {kl['stderr']:.4f} | {kl['p99']:.3f} | {100 * kl['top1_agreement']:.1f}% "
              f"| {100 * coqa['f1']['mean']:.1f} [{100 * coqa['f1']['ci_low']:.1f}, {100 * coqa['f1']['ci_high']:.1f}] "
              f"| {100 * coqa['em']['mean']:.1f} | {float(t['quantize_seconds']):.1f} |")


if __name__ == "__main__":
    main()
