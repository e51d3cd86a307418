#!/usr/bin/env python3
"""Reference logits and token ids from Hugging Face transformers, for qrt's correctness tests.

transformers loads the GGUF file itself (dequantizing every tensor to float32 and undoing
llama.cpp's Q/K permutation) and converts its tokenizer metadata into a fast tokenizer; this
script runs the model on the CPU in float32 and writes, per prompt, the top-k logits at every
position, the greedy continuation of "The capital of France is", and the token ids of a set of
tokenizer test strings. Output: tests/fixtures/reference_smollm2.json.

Run where torch, transformers and the `gguf` package are installed (the GPU machine has the
first two; carry the gguf wheel):
    python3 tools/reference_logits.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf --out FILE
"""
import argparse
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived",
    "<|im_start|>user\nWhat is 12 times 12?<|im_end|>\n<|im_start|>assistant\n",
    "Café naïve — 東京 🚀 in 2024: 3.14159 and   spaces\tand\ttabs",
]

TOKENIZER_STRINGS = [
    "Hello world",
    " leading space",
    "multiple   spaces    and\n\nnewlines\n",
    "digits 1234567890 and 3.14159, -42",
    "unicode: Café naïve façade — 東京 Привет 🚀🤖",
    "<|im_start|>system\nYou are helpful<|im_end|>\n",
    "<|endoftext|>special in the middle<|im_end|>tail",
    "tabs\tand\r\nCRLF",
    "don't you'll we've I'm",
    "x" * 40,
    "",
]

TOP_K = 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(args.gguf))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    out = {
        "source": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "device": "cpu",
        "top_k": TOP_K,
        "prompts": [],
        "tokenizer": [],
    }
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tok(prompt, add_special_tokens=True).input_ids
            logits = model(torch.tensor([ids])).logits[0].float()
            values, indices = logits.topk(TOP_K, dim=-1)
            out["prompts"].append({
                "prompt": prompt,
                "ids": ids,
                "top_ids": indices.tolist(),
                "top_logits": values.tolist(),
            })
        ids = tok("The capital of France is", return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=16, do_sample=False)
        out["greedy"] = {
            "prompt": "The capital of France is",
            "ids": gen[0, ids.shape[1]:].tolist(),
            "text": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True),
        }
    for s in TOKENIZER_STRINGS:
        out["tokenizer"].append({"text": s, "ids": tok(s, add_special_tokens=True).input_ids})
    with open(args.out, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print("wrote", args.out, "greedy:", repr(out["greedy"]["text"]))


if __name__ == "__main__":
    main()
