// Small row-wise and element-wise kernels of the decoder graph: embedding gather, the fused
// rotary embedding + KV-cache store, SiLU-and-multiply, row gather, conversion of activations
// to 16 bits for the tensor cores (with SiLU-and-multiply fused for the MLP), and greedy token
// choice (argmax).
// Activations are f32 throughout; the KV cache is f16.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32(__half v) {
    return __half2float(v);
}
template <>
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

// out[r, :] = table[tokens[r], :]; one block per row.
template <typename T>
__device__ __forceinline__ void embed(const T* table, const uint32_t* tokens, float* out,
                                      uint32_t cols) {
    qrt::pdl_enter();
    const size_t src = static_cast<size_t>(tokens[blockIdx.x]) * cols;
    const size_t dst = static_cast<size_t>(blockIdx.x) * cols;
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) out[dst + c] = to_f32(table[src + c]);
}

// Rotates the pair (x[j], x[j + D/2]) of one head by `angle`, as the CPU reference does.
__device__ __forceinline__ void rotate(float* head, uint32_t j, uint32_t half, float c, float s) {
    const float x1 = head[j];
    const float x2 = head[j + half];
    head[j] = x1 * c - x2 * s;
    head[j + half] = x2 * c + x1 * s;
}

}  // namespace

extern "C" __global__ void qrt_embed_f16(const __half* table, const uint32_t* tokens, float* out,
                                         uint32_t cols) {
    embed(table, tokens, out, cols);
}
extern "C" __global__ void qrt_embed_bf16(const __nv_bfloat16* table, const uint32_t* tokens,
                                          float* out, uint32_t cols) {
    embed(table, tokens, out, cols);
}

// One block per row: rotates q and k in place, then stores k and v (f16) in the row's slot.
extern "C" __global__ void qrt_rope_kv(const qrt_rope_kv_args args) {
    qrt::pdl_enter();
    const uint32_t r = blockIdx.x;
    const uint32_t d = args.head_dim;
    const uint32_t half = d / 2;
    const float pos = static_cast<float>(reinterpret_cast<const uint32_t*>(args.positions)[r]);
    const float* inv_freq = reinterpret_cast<const float*>(args.inv_freq);
    float* q = reinterpret_cast<float*>(args.q) + static_cast<size_t>(r) * args.num_heads * d;
    float* k = reinterpret_cast<float*>(args.k) + static_cast<size_t>(r) * args.num_kv_heads * d;
    const float* v =
        reinterpret_cast<const float*>(args.v) + static_cast<size_t>(r) * args.num_kv_heads * d;
    const size_t slot =
        static_cast<size_t>(reinterpret_cast<const uint32_t*>(args.slots)[r]) * args.num_kv_heads * d;
    __half* kc = reinterpret_cast<__half*>(args.k_cache) + slot;
    __half* vc = reinterpret_cast<__half*>(args.v_cache) + slot;

    const uint32_t pairs = (args.num_heads + args.num_kv_heads) * half;
    for (uint32_t i = threadIdx.x; i < pairs; i += blockDim.x) {
        const uint32_t head = i / half;
        const uint32_t j = i % half;
        float s, c;
        sincosf(pos * inv_freq[j], &s, &c);
        if (head < args.num_heads) {
            rotate(q + head * d, j, half, c, s);
        } else {
            float* kh = k + (head - args.num_heads) * d;
            rotate(kh, j, half, c, s);
            __half* kch = kc + (head - args.num_heads) * d;
            kch[j] = __float2half_rn(kh[j]);
            kch[j + half] = __float2half_rn(kh[j + half]);
        }
    }
    for (uint32_t i = threadIdx.x; i < args.num_kv_heads * d; i += blockDim.x) {
        vc[i] = __float2half_rn(v[i]);
    }
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up.
extern "C" __global__ void qrt_silu_mul(const float* gate, const float* up, float* out,
                                        uint32_t n) {
    qrt::pdl_enter();
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[i] = qrt::swiglu(gate[i], up[i]);
    }
}

// out[i, :] = x[rows[i], :]; one block per output row.
extern "C" __global__ void qrt_gather_rows(const float* x, const uint32_t* rows, float* out,
                                           uint32_t cols) {
    qrt::pdl_enter();
    const size_t src = static_cast<size_t>(rows[blockIdx.x]) * cols;
    const size_t dst = static_cast<size_t>(blockIdx.x) * cols;
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) out[dst + c] = x[src + c];
}

// Rounds f32 activations to f16 / bf16 (round to nearest even) for the tensor-core GEMM.
extern "C" __global__ void qrt_to_f16(const float* x, __half* out, uint32_t n) {
    qrt::pdl_enter();
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __float2half_rn(x[i]);
}
extern "C" __global__ void qrt_to_bf16(const float* x, __nv_bfloat16* out, uint32_t n) {
    qrt::pdl_enter();
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(x[i]);
}

// Argmax of every row as a 64-bit key: the value's bits made orderable as an unsigned integer
// in the high half, the complement of the index in the low half, so that the largest key is
// the largest value at the first index (as torch.argmax). Blocks (x) split each row (y) into
// QRT_ARGMAX_PER_BLOCK logits and write one key each, `keys[row][block]`: the row's key is the
// largest of them. NaN is never chosen; NaNs only give a key of zero.
__device__ __forceinline__ unsigned long long argmax_key(float v, uint32_t i) {
    const uint32_t bits = __float_as_uint(v);
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (static_cast<unsigned long long>(ordered) << 32) | (0xffffffffu - i);
}

extern "C" __global__ void __launch_bounds__(256)
    qrt_argmax(const float* logits, unsigned long long* keys, uint32_t vocab) {
    constexpr uint32_t kPerThread = QRT_ARGMAX_PER_BLOCK / 256;
    qrt::pdl_enter();
    const float* row = logits + static_cast<size_t>(blockIdx.y) * vocab;
    const uint32_t begin = blockIdx.x * QRT_ARGMAX_PER_BLOCK + threadIdx.x;
    // All of this thread's logits requested at once, then compared.
    float v[kPerThread];
#pragma unroll
    for (uint32_t k = 0; k < kPerThread; ++k) {
        const uint32_t i = begin + k * 256;
        v[k] = i < vocab ? __ldcg(row + i) : __int_as_float(0x7fffffff);  // NaN: never chosen
    }
    unsigned long long best = 0;
#pragma unroll
    for (uint32_t k = 0; k < kPerThread; ++k)
        if (v[k] == v[k]) best = max(best, argmax_key(v[k], begin + k * 256));
#pragma unroll
    for (unsigned o = 16; o > 0; o /= 2) best = max(best, __shfl_xor_sync(qrt::kFull, best, o));
    __shared__ unsigned long long warps[8];
    if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (unsigned w = 1; w < blockDim.x / 32; ++w) best = max(best, warps[w]);
        keys[static_cast<size_t>(blockIdx.y) * gridDim.x + blockIdx.x] = best;
    }
}

// The tokens of qrt_argmax's keys (`per_row` per row): `chosen[r]` (host memory mapped into
// the device's address space, so no copy follows), QRT_SAMPLE_NO_TOKEN for a row of NaNs; and,
// where `feed.rows[r]` names a row of the next pass (not 0xffffffff), that pass's input token
// `next_tokens[feed.rows[r]]` (0 for a row of NaNs: the host reports the error), so the next
// pass can run before the host has read this one's choice. One block.
extern "C" __global__ void __launch_bounds__(256)
    qrt_argmax_finalize(const unsigned long long* keys, uint32_t per_row, uint32_t rows,
                        const qrt_feed feed, uint32_t* next_tokens, uint32_t* chosen) {
    qrt::pdl_enter();
    for (uint32_t r = threadIdx.x; r < rows; r += blockDim.x) {
        unsigned long long best = 0;
        for (uint32_t b = 0; b < per_row; ++b) best = max(best, keys[static_cast<size_t>(r) * per_row + b]);
        const uint32_t token = 0xffffffffu - static_cast<uint32_t>(best);
        chosen[r] = best != 0 ? token : QRT_SAMPLE_NO_TOKEN;
        if (r < QRT_FEED_MAX_ROWS && feed.rows[r] != 0xffffffffu)
            next_tokens[feed.rows[r]] = best != 0 ? token : 0;
    }
}

// Perplexity's per-row figure: out[r] = log softmax(logits[r])[targets[r]], as the CPU
// reference (qrt_runtime::logprob) computes it: the maximum in f32, the differences to it in
// f32, their exponentials and sum in f64, the result rounded to f32. One block per row.
extern "C" __global__ void __launch_bounds__(256)
    qrt_target_log_probs(const float* logits, const uint32_t* targets, float* out,
                         uint32_t vocab) {
    qrt::pdl_enter();
    const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    __shared__ float warp_max[8];
    __shared__ double warp_sum[8];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

    float m = -INFINITY;
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, __ldcg(row + i));
    m = qrt::warp_max(m);
    if (lane == 0) warp_max[warp] = m;
    __syncthreads();
    m = warp_max[0];
    for (unsigned w = 1; w < warps; ++w) m = fmaxf(m, warp_max[w]);

    double sum = 0.0;
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x)
        sum += exp(static_cast<double>(__ldcg(row + i) - m));
#pragma unroll
    for (unsigned o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(qrt::kFull, sum, o);
    if (lane == 0) warp_sum[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (unsigned w = 0; w < warps; ++w) total += warp_sum[w];
        const double log_z = static_cast<double>(m) + log(total);
        const float v = __ldcg(row + __ldcg(targets + blockIdx.x));
        out[blockIdx.x] = static_cast<float>(static_cast<double>(v) - log_z);
    }
}
