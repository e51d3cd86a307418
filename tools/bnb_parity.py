#!/usr/bin/env python3
"""Make the bitsandbytes 4-bit parity fixtures for format/tests/quant_bnb_parity.rs.

Needs torch, bitsandbytes (0.50.x) and a CUDA GPU. Quantizes fixed-seed tensors with
bitsandbytes.functional.quantize_4bit (nf4 / fp4, with and without
compress_statistics), dequantizes them with dequantize_4bit, and writes

  DIR/index.json     what each case is and where its arrays are in the blob
  DIR/fixtures.bin   the arrays, raw little-endian, back to back

Arrays: the input tensor (f32, or bf16 for the large bf16 case to keep the fixtures
small; both are exact), the packed data (u8), the absmax (f32) or, with double
quantization, qabsmax (u8), offset (f32[1]), state2.absmax (f32) and state2.code
(f32[256]); the dequantized output in the tensor's dtype (its SHA-256 for the large
case); the NF4/FP4 codebooks and create_dynamic_map() this bitsandbytes uses; and
(with CuPy) how the GPU's fast-math reciprocal, which bitsandbytes' kernels divide by
the block absmax with, deviates from IEEE for f16/bf16-representable values.

    python3 tools/bnb_parity.py --out format/tests/fixtures/bnb
"""

import argparse
import hashlib
import json
import os
import sys

import torch

try:
    import bitsandbytes
    import bitsandbytes.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.exit(f"bnb_parity: bitsandbytes is not importable ({e}); install the wheel first")

# Cases whose numel is at most this keep the full dequantized output; larger ones keep
# its SHA-256 only (the fixtures must stay small).
FULL_DEQUANT_MAX = 8192

DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.uint8: "u8"}


class Blob:
    """Arrays appended to one byte buffer, deduplicated by content."""

    def __init__(self):
        self.data = bytearray()
        self.arrays = {}
        self.by_digest = {}

    def add(self, name, t):
        t = t.detach().contiguous().cpu()
        dtype = DTYPE_NAMES[t.dtype]
        raw = raw_bytes(t)
        digest = hashlib.sha256(dtype.encode() + raw).hexdigest()
        if digest in self.by_digest:
            return self.by_digest[digest]
        self.arrays[name] = {
            "dtype": dtype,
            "offset": len(self.data),
            "count": t.numel(),
            "shape": list(t.shape),
        }
        self.data += raw
        self.by_digest[digest] = name
        return name


def raw_bytes(t):
    """Little-endian bytes of a CPU tensor (bf16 through its int16 view)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    b = t.numpy().tobytes()
    if sys.byteorder != "little":  # pragma: no cover
        sys.exit("bnb_parity: this script writes little-endian fixtures on little-endian hosts only")
    return b


def inputs():
    """(name, dtype, tensor as f32) of every input, from fixed seeds (CPU generator)."""

    def randn(seed, shape):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32)

    a = randn(1, (64, 128))
    b = randn(2, (256, 320))
    c = randn(3, (1, 4096))
    c[0, [5, 100, 777, 2048, 4000, 4095]] = torch.tensor([25.0, -40.0, 60.0, -12.0, 80.0, -7.5])
    d = randn(4, (7, 37)) * 0.02
    d.view(-1)[64:128] = 0.0  # one all-zero block; 259 values: odd, last block partial
    out = [
        ("64x128_f16", torch.float16, a),
        ("256x320_bf16", torch.bfloat16, b),
        ("1x4096_f32_outliers", torch.float32, c),
        ("7x37_f16_zero_block", torch.float16, d),
    ]
    # A real weight: the first 64 rows of SmolLM2-135M-Instruct's blk.0.attn_q.weight (Q4_1
    # in the GGUF, dequantized and stored as f16), committed beside the fixtures.
    real = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "format", "tests",
                        "fixtures", "bnb", "real_smollm2_blk0_attn_q_64x576.f16")
    if os.path.exists(real):
        raw = torch.frombuffer(bytearray(open(real, "rb").read()), dtype=torch.float16)
        out.append((REAL, torch.float16, raw.float().reshape(64, 576)))
    return out


REAL = "real_smollm2_blk0_attn_q_64x576_f16"


def cases():
    """(input name, quant_type, blocksize, double_quant) of every case."""
    out = []
    for name, _, _ in inputs():
        for quant_type in ("nf4", "fp4"):
            for dq in (False, True):
                out.append((name, quant_type, 64, dq))
    out += [
        ("64x128_f16", "nf4", 32, True),
        ("64x128_f16", "nf4", 256, True),
        ("64x128_f16", "fp4", 128, False),
    ]
    return out


RCP_SOURCE = r"""
extern "C" __global__ void rcp(const float* x, float* fast, float* exact, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        fast[i] = 1.0f / x[i];      // what bitsandbytes' kernels compute (--use_fast_math)
        exact[i] = __frcp_rn(x[i]); // IEEE round-to-nearest
    }
}"""


def gpu_reciprocals(x):
    """(fast-math 1/x, IEEE 1/x) of a float32 tensor on the GPU, or None without CuPy."""
    try:
        import cupy
    except ImportError:
        return None
    kernel = cupy.RawKernel(RCP_SOURCE, "rcp", options=("--use_fast_math",))
    xs = cupy.asarray(x.detach().float().contiguous().cpu().numpy())
    fast, exact = cupy.empty_like(xs), cupy.empty_like(xs)
    n = xs.size
    kernel(((n + 255) // 256,), (256,), (xs, fast, exact, cupy.int32(n)))
    return torch.from_numpy(cupy.asnumpy(fast)), torch.from_numpy(cupy.asnumpy(exact))


def rcp_table():
    """The GPU's fast-math reciprocal of every float with an 11-bit significand (all f16
    and bf16 values), as a deviation from IEEE in ulps per 10-bit mantissa (stored +1, as
    u8), after checking it does not depend on the exponent; and the deviation counts
    over all 2^23 float32 mantissas. None without CuPy."""
    m = torch.arange(1024, dtype=torch.float64)
    exps = torch.arange(-100, 101, dtype=torch.float64)
    x = ((1 + m / 1024)[None, :] * torch.pow(2.0, exps)[:, None]).float()
    r = gpu_reciprocals(x.flatten())
    if r is None:
        return None
    fast, exact = r
    dev = (fast.view(torch.int32).long() - exact.view(torch.int32).long()).reshape(x.shape)
    if not bool((dev == dev[100]).all()):
        sys.exit("bnb_parity: the fast reciprocal depends on the exponent; the table model does not hold")
    if int(dev.abs().max()) > 1:
        sys.exit("bnb_parity: the fast reciprocal is off by more than one ulp")
    full = torch.arange(1 << 23, dtype=torch.int32) | 0x3F800000
    fast_all, exact_all = gpu_reciprocals(full.view(torch.float32))
    d = fast_all.view(torch.int32).long() - exact_all.view(torch.int32).long()
    counts = {str(k): int((d == k).sum()) for k in (-1, 0, 1)}
    return (dev[100] + 1).to(torch.uint8), counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bnb_parity: needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False

    blob = Blob()
    ins = {name: (dtype, t) for name, dtype, t in inputs()}
    index = {
        "bitsandbytes_version": bitsandbytes.__version__,
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(dev),
        "blob": "fixtures.bin",
        "codebooks": {
            "nf4": blob.add("codebook_nf4", F.get_4bit_type("nf4", device=dev)),
            "fp4": blob.add("codebook_fp4", F.get_4bit_type("fp4", device=dev)),
            "dynamic_map": blob.add("dynamic_map", F.create_dynamic_map()),
        },
        "inputs": {},
        "cases": [],
        "arrays": blob.arrays,
    }
    for name, (dtype, t) in ins.items():
        x = t.to(dtype)
        # bf16 inputs are stored as bf16 (half the bytes, still exact); others as f32.
        stored = x if dtype == torch.bfloat16 else x.float()
        index["inputs"][name] = {
            "array": blob.add(f"input_{name}", stored),
            "shape": list(t.shape),
            "dtype": DTYPE_NAMES[dtype],
        }

    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}, {index['device']}")
    for in_name, quant_type, bs, dq in cases():
        dtype, t = ins[in_name]
        x = t.to(dev, dtype)
        packed, st = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type=quant_type)
        deq = F.dequantize_4bit(packed, st)
        torch.cuda.synchronize()
        assert deq.dtype == dtype and tuple(deq.shape) == tuple(t.shape)
        case_name = f"{quant_type}_bs{bs}_{'dq' if dq else 'plain'}_{in_name}"
        case = {
            "name": case_name,
            "input": in_name,
            "quant_type": quant_type,
            "blocksize": bs,
            "double_quant": dq,
            "data": blob.add(f"data_{case_name}", packed.view(torch.uint8).flatten()),
            "dequant_sha256": hashlib.sha256(raw_bytes(deq.cpu())).hexdigest(),
        }
        if dq:
            case["qabsmax"] = blob.add(f"qabsmax_{case_name}", st.absmax)
            case["offset"] = blob.add(f"offset_{case_name}", st.offset.reshape(1).float())
            case["state2_absmax"] = blob.add(f"state2_absmax_{case_name}", st.state2.absmax)
            case["state2_code"] = blob.add(f"state2_code_{case_name}", st.state2.code)
            absmax_line = (
                f"offset {st.offset.item():.6g}, {st.absmax.numel()} qabsmax, "
                f"{st.state2.absmax.numel()} state2 scales"
            )
        else:
            case["absmax"] = blob.add(f"absmax_{case_name}", st.absmax)
            absmax_line = f"{st.absmax.numel()} absmax in [{st.absmax.min().item():.4g}, {st.absmax.max().item():.4g}]"
        if t.numel() <= FULL_DEQUANT_MAX:
            case["dequant"] = blob.add(f"dequant_{case_name}", deq)
        index["cases"].append(case)
        err = (deq.float() - x.float()).pow(2).mean().sqrt() / x.float().pow(2).mean().sqrt()
        print(f"  {case_name:44s} {packed.numel():6d} bytes, {absmax_line}; rel. RMS error {err.item():.4f}")

    table = rcp_table()
    if table is not None:
        index["rcp_deviation"] = blob.add("rcp_deviation_by_f16_mantissa", table[0])
        index["rcp_deviation_counts_f32"] = table[1]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fixtures.bin"), "wb") as f:
        f.write(blob.data)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    total = len(blob.data) + os.path.getsize(os.path.join(args.out, "index.json"))
    rcp_line = (
        f"fast-math reciprocal vs IEEE over all f32 mantissas (ulps: count): {table[1]}"
        if table is not None
        else "CuPy missing: no reciprocal table"
    )
    print(f"{len(index['cases'])} cases, {len(blob.arrays)} arrays, {total} bytes in {args.out}; {rcp_line}")


if __name__ == "__main__":
    main()
