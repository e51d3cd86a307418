#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for the tiny checkpoints in
format/tests/fixtures/gguf/*_hf, for qrt's model-graph tests: a Llama (GQA, untied head),
the same Llama with Llama-3 rope scaling over a 200-token input, and a Qwen2 (q/k/v biases,
tied head). Runs on the CPU in float32; writes tests/fixtures/reference_tiny.json.

    python3 tools/reference_tiny.py --out tests/fixtures/reference_tiny.json
"""
import argparse
import json
import os
import shutil
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "format", "tests", "fixtures", "gguf")
TOP_K = 10
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def ids_for(vocab, n):
    return [(i * 7 + 3) % vocab for i in range(n)]


def run(folder, n, edit=None):
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        cfg_path = os.path.join(tmp, "config.json")
        cfg = json.load(open(cfg_path))
        if edit:
            cfg.update(edit)
            json.dump(cfg, open(cfg_path, "w"))
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        model.eval()
        ids = ids_for(cfg["vocab_size"], n)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        values, indices = logits.topk(TOP_K, dim=-1)
        return {"ids": ids, "top_ids": indices.tolist(), "top_logits": values.tolist(), "config_edit": edit or {}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "models": {
            "tiny_llama_hf": run(os.path.join(FIXTURES, "tiny_llama_hf"), 40),
            "tiny_llama_hf+llama3_rope": run(os.path.join(FIXTURES, "tiny_llama_hf"), 200,
                                             {"rope_scaling": LLAMA3_SCALING}),
            "tiny_qwen2_hf": run(os.path.join(FIXTURES, "tiny_qwen2_hf"), 40),
        },
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
