#!/usr/bin/env python3
"""Reference numbers for `qrt eval` from Hugging Face transformers (float32), written
independently of qrt: the llama.cpp-style perplexity of the default model on the first
windows of WikiText-2, and lm-evaluation-harness-style CoQA predictions for the first stories
of the dev set. Output: tests/fixtures/reference_eval.json.

    python3 tools/reference_eval.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --wikitext wiki.test.raw --coqa coqa-dev.hf.jsonl --out FILE
"""
import argparse
import json
import math
import os
from itertools import zip_longest

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CTX = 512
WINDOWS = 8
STORIES = 8
MAX_NEW = 256


def coqa_prompt(doc):
    # lm-evaluation-harness coqa doc_to_text, for the stanfordnlp/coqa schema.
    text = doc["story"] + "\n\n"
    for q, a in zip_longest(doc["questions"], doc["answers"]["input_text"][:-1]):
        text += f"Q: {q}\n\n" + (f"A: {a}\n\n" if a is not None else "A:")
    return text


def main():
    ap = argparse.ArgumentParser()
    for a in ("--gguf", "--wikitext", "--coqa", "--out"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).to(dev).eval()

    # Bytes as they are (the file has CRLF line ends), as llama.cpp and qrt read it.
    text = open(args.wikitext, encoding="utf-8", newline="").read()
    ids = tok(text, add_special_tokens=False).input_ids
    nlls = []
    with torch.no_grad():
        for w in range(WINDOWS):
            window = torch.tensor([ids[w * CTX:(w + 1) * CTX]], device=dev)
            logp = torch.log_softmax(model(window).logits[0].double(), dim=-1)
            first = CTX // 2
            targets = window[0, first + 1:CTX]
            nlls.append((-logp[first:CTX - 1].gather(1, targets[:, None]).squeeze(1)).sum().item())
    count = WINDOWS * (CTX - 1 - CTX // 2)
    # total_tokens differs from qrt's by 9 on WikiText-2: transformers' GGUF tokenizer converter
    # drops SmolLM's Digits pre-tokenizer (tokenizer.ggml.pre = smollm). The windows scored here
    # come before the first difference (token 66,531); the test checks their ids.
    ppl = {"ctx": CTX, "windows": WINDOWS, "total_tokens": len(ids), "window_ids": ids[:WINDOWS * CTX],
           "window_nll_sums": nlls,
           "tokens_scored": count, "ppl": math.exp(sum(nlls) / count)}

    docs = [json.loads(l) for l in open(args.coqa, encoding="utf-8") if l.strip()][:STORIES]
    preds = []
    with torch.no_grad():
        for i, doc in enumerate(docs):
            enc = tok(coqa_prompt(doc), add_special_tokens=False, return_tensors="pt").input_ids.to(dev)
            out = model.generate(enc, max_new_tokens=MAX_NEW, do_sample=False, stop_strings=["\nQ:"],
                                 tokenizer=tok, pad_token_id=tok.eos_token_id)
            gen = tok.decode(out[0, enc.shape[1]:], skip_special_tokens=True)
            gen = gen.split("\nQ:")[0]
            preds.append({"id": str(i), "prompt_tokens": enc.shape[1], "prediction": gen.strip().split("\n")[0]})
    result = {"source": name, "transformers": transformers.__version__, "torch": torch.__version__,
              "device": dev, "dtype": "float32 (no TF32)", "perplexity": ppl, "coqa": preds}
    json.dump(result, open(args.out, "w"), ensure_ascii=False, indent=1)
    print("wrote", args.out, "ppl", ppl["ppl"], [p["prediction"] for p in preds])


if __name__ == "__main__":
    main()
