// Token choice on the device: greedy, or temperature / top-k / top-p sampling with one
// uniform per row, choosing the token the CPU reference (qrt_runtime::sampling::
// sample_with_uniform) chooses for the same uniform, unless the uniform or top_p lies within
// rounding of a boundary between two candidates.
//
// One block per row. Candidate order: every token gets the 64-bit key
//   (bits of c = logit / temperature, made orderable as an unsigned integer) << 32
//   | (0xffffffff - index),
// so that descending keys are the CPU's order (c descending in f32 total order, ties by lower
// index) and no two keys are equal. Each of the three steps is one radix select over the keys,
// 8 bits at a time from the top: within a kept set {key >= lo}, the key K at which the weight
// summed in descending order first reaches a target t, i.e. weight(> K) < t <= weight(>= K).
//   top-k:  weight 1, t = top_k; the kept set becomes {key >= K}.
//   top-p:  w = round(exp(c - c_max) * 2^40) as an integer (the difference in f32, the
//           exponential in f64, as on the CPU); Z = sum of w over the kept set;
//           t = ceil(top_p * Z): the shortest prefix whose probability reaches top_p.
//   sample: t = floor(u * Z) + 1 over the final set: the first candidate whose inclusive
//           cumulative probability exceeds u (the CPU's `u < cum`).
// The sums are exact integers, so they do not depend on the order of the atomics. A candidate
// less likely than 2^-41 times the top token rounds to weight 0 and is never chosen (the CPU
// may choose it, with that tiny probability). NaN values get weight 0; a row whose top value is
// NaN or +inf has no weight at all and yields its top candidate.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr unsigned kBins = 256;
// 2^40: the weight of the top candidate.
constexpr double kWeightScale = 1099511627776.0;

// The bits of `v` as an unsigned integer with the order of f32's total order (Rust's
// total_cmp): negative values flipped, positive ones with the sign bit set.
__device__ __forceinline__ uint32_t ordered_bits(float v) {
    const uint32_t bits = __float_as_uint(v);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float from_ordered(uint32_t o) {
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ unsigned long long make_key(float c, uint32_t i) {
    return (static_cast<unsigned long long>(ordered_bits(c)) << 32) | (0xffffffffu - i);
}

__device__ __forceinline__ uint32_t key_index(unsigned long long key) {
    return 0xffffffffu - static_cast<uint32_t>(key);
}

// round(exp(c - c_max) * 2^40): the difference in f32 and the exponential in f64, as the CPU
// computes them; 0 for NaN (and for anything below 2^-41).
__device__ __forceinline__ unsigned long long weight_of(float c, float c_max) {
    const double e = exp(static_cast<double>(c - c_max)) * kWeightScale;
    return e >= 0.5 ? __double2ull_rn(e) : 0ull;
}

// What a selection's target is made of.
enum class Mode {
    // Weight 1 per candidate; the target is the parameter (top-k).
    kCount,
    // Probability weights; the target is ceil(parameter * Z) (top-p).
    kTopP,
    // Probability weights; the target is floor(parameter * Z) + 1 (the uniform).
    kSample,
};

struct Shared {
    // Per bin of the current byte: summed weight, number of candidates, and the key of one of
    // them (the only one when the count is 1).
    unsigned long long weight[kBins];
    unsigned long long key[kBins];
    uint32_t count[kBins];
    // Block reductions.
    unsigned long long warp_max[qrt::kWarp];
    // The outcome of a scan: the chosen bin, the target left within it, its count and key.
    unsigned long long remaining;
    unsigned long long bin_key;
    uint32_t bin;
    uint32_t bin_count;
};

// The largest `v` over the block (all threads get it).
__device__ unsigned long long block_max(unsigned long long v, Shared& sh) {
#pragma unroll
    for (unsigned o = qrt::kWarp / 2; o > 0; o /= 2) v = max(v, __shfl_xor_sync(qrt::kFull, v, o));
    if (threadIdx.x % qrt::kWarp == 0) sh.warp_max[threadIdx.x / qrt::kWarp] = v;
    __syncthreads();
    if (threadIdx.x < qrt::kWarp) {
        v = threadIdx.x < blockDim.x / qrt::kWarp ? sh.warp_max[threadIdx.x] : 0ull;
#pragma unroll
        for (unsigned o = qrt::kWarp / 2; o > 0; o /= 2)
            v = max(v, __shfl_xor_sync(qrt::kFull, v, o));
        if (threadIdx.x == 0) sh.warp_max[0] = v;
    }
    __syncthreads();
    v = sh.warp_max[0];
    __syncthreads();
    return v;
}

__device__ __forceinline__ unsigned long long target_of(Mode mode, double param,
                                                        unsigned long long total) {
    if (mode == Mode::kCount) return static_cast<unsigned long long>(param);
    const double z = static_cast<double>(total);
    const double t = mode == Mode::kTopP ? ceil(param * z) : floor(param * z) + 1.0;
    // Clamped to [1, total]: u * Z may round up to Z, and top_p may be outside [0, 1].
    if (!(t > 1.0)) return 1;
    if (t >= z) return total;
    return static_cast<unsigned long long>(t);
}

// The key K among {key >= lo} with weight(> K) < target <= weight(>= K), target made from
// `param` by `mode`; 0 (no key) when the set has no weight. Called by the whole block.
__device__ unsigned long long select(const float* row, uint32_t vocab, float temperature,
                                     float c_max, unsigned long long lo, Mode mode, double param,
                                     Shared& sh) {
    const unsigned lane = threadIdx.x % qrt::kWarp;
    unsigned long long prefix = 0, mask = 0, target = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (unsigned b = threadIdx.x; b < kBins; b += blockDim.x) {
            sh.weight[b] = 0;
            sh.count[b] = 0;
        }
        __syncthreads();
        // Every thread runs the same number of iterations, so that whole warps match bins.
        for (uint32_t base = 0; base < vocab; base += blockDim.x) {
            const uint32_t i = base + threadIdx.x;
            unsigned bin = kBins;  // none
            unsigned long long key = 0, w = 0;
            if (i < vocab) {
                const float c = __fdiv_rn(__ldcg(row + i), temperature);
                key = make_key(c, i);
                if (key >= lo && (key & mask) == prefix) {
                    w = mode == Mode::kCount ? 1ull : weight_of(c, c_max);
                    if (w != 0) bin = static_cast<unsigned>(key >> shift) & (kBins - 1);
                }
            }
            if (mode == Mode::kCount) {
                // Candidates crowd into few bins: one atomic per bin and warp.
                const unsigned peers = __match_any_sync(qrt::kFull, bin);
                if (bin < kBins && lane == __ffs(peers) - 1) {
                    const unsigned n = __popc(peers);
                    atomicAdd(&sh.weight[bin], static_cast<unsigned long long>(n));
                    atomicAdd(&sh.count[bin], n);
                    sh.key[bin] = key;
                }
            } else if (bin < kBins) {
                atomicAdd(&sh.weight[bin], w);
                atomicAdd(&sh.count[bin], 1u);
                sh.key[bin] = key;
            }
        }
        __syncthreads();
        if (threadIdx.x < qrt::kWarp) {
            // Lane l holds bins 255 - 8l down to 248 - 8l: lanes in descending key order.
            unsigned long long w[8];
            unsigned long long sum = 0;
#pragma unroll
            for (unsigned j = 0; j < 8; ++j) {
                w[j] = sh.weight[kBins - 1 - 8 * lane - j];
                sum += w[j];
            }
            unsigned long long inclusive = sum;
#pragma unroll
            for (unsigned o = 1; o < qrt::kWarp; o *= 2) {
                const unsigned long long n = __shfl_up_sync(qrt::kFull, inclusive, o);
                if (lane >= o) inclusive += n;
            }
            if (shift == 56) {
                const unsigned long long total = __shfl_sync(qrt::kFull, inclusive, qrt::kWarp - 1);
                target = total == 0 ? 0 : target_of(mode, param, total);
            }
            unsigned long long before = inclusive - sum;
            const unsigned hit =
                __ballot_sync(qrt::kFull, target != 0 && before < target && target <= inclusive);
            if (hit == 0) {
                if (lane == 0) sh.bin_count = 0;
            } else if (lane == __ffs(hit) - 1) {
#pragma unroll
                for (unsigned j = 0; j < 8; ++j) {
                    if (target - before <= w[j]) {
                        const unsigned bin = kBins - 1 - 8 * lane - j;
                        sh.bin = bin;
                        sh.remaining = target - before;
                        sh.bin_count = sh.count[bin];
                        sh.bin_key = sh.key[bin];
                        break;
                    }
                    before += w[j];
                }
            }
        }
        __syncthreads();
        const uint32_t count = sh.bin_count;
        if (count == 0) return 0;  // no weight (only possible on the first byte)
        if (count == 1) return sh.bin_key;
        target = sh.remaining;
        prefix |= static_cast<unsigned long long>(sh.bin) << shift;
        mask |= 0xffull << shift;
        // Everyone has read the outcome before the next byte's scan rewrites it.
        __syncthreads();
    }
    return prefix;  // all 64 bits fixed: keys are unique
}

}  // namespace

// Chooses one token per row of `logits` (`[rows, vocab]` f32) under `params[row]` into
// `tokens[row]`; one block per row, blockDim.x a multiple of 32. Greedy rows (temperature <= 0
// or top_k == 1, as on the CPU) take the largest logit, the first on ties, NaN never
// (QRT_SAMPLE_NO_TOKEN for a row of NaNs), as qrt_argmax does.
extern "C" __global__ void __launch_bounds__(QRT_MAX_BLOCK_THREADS)
    qrt_sample(const float* logits, const qrt_sample_row* params, uint32_t* tokens,
               uint32_t vocab) {
    qrt::pdl_enter();
    __shared__ Shared sh;
    const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    const qrt_sample_row* p = params + blockIdx.x;
    const float temperature = __ldcg(&p->temperature);
    const uint32_t top_k = __ldcg(&p->top_k);

    if (temperature <= 0.f || top_k == 1) {
        unsigned long long best = 0;
        for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float v = __ldcg(row + i);
            if (v == v) best = max(best, make_key(v, i));
        }
        best = block_max(best, sh);
        if (threadIdx.x == 0) tokens[blockIdx.x] = best != 0 ? key_index(best) : QRT_SAMPLE_NO_TOKEN;
        return;
    }

    unsigned long long top = 0;
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x)
        top = max(top, make_key(__fdiv_rn(__ldcg(row + i), temperature), i));
    top = block_max(top, sh);
    const float c_max = from_ordered(static_cast<uint32_t>(top >> 32));

    unsigned long long lo = 0;
    if (top_k != 0 && top_k < vocab)
        lo = select(row, vocab, temperature, c_max, lo, Mode::kCount, top_k, sh);
    const float top_p = __ldcg(&p->top_p);
    if (top_p < 1.f) {
        const unsigned long long k = select(row, vocab, temperature, c_max, lo, Mode::kTopP,
                                            static_cast<double>(top_p), sh);
        if (k != 0) lo = k;
    }
    const unsigned long long chosen =
        select(row, vocab, temperature, c_max, lo, Mode::kSample, __ldcg(&p->uniform), sh);
    if (threadIdx.x == 0) tokens[blockIdx.x] = key_index(chosen != 0 ? chosen : top);
}
