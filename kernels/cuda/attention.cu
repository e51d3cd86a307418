// Attention over the paged KV cache (f16 K and V pools, f32 queries and outputs), grouped-query
// aware: one thread block serves all the query heads of one key/value head, so each K and V
// element is read once for the whole group.
//
// Prefill (`qrt_attn_prefill_d<D>`): flash-style tiling. A block takes a tile of up to 32 query
// rows (16 when D = 128) of one sequence (from the tile list in `args.work`) for one KV head;
// keys and values stream through shared memory 32 tokens at a time, and every thread keeps one query row of one
// head (64 of its dimensions; two threads share a row when D = 128) with a running maximum, sum
// and output (online softmax), so no score matrix is ever stored.
//
// Decode (`qrt_attn_decode_d<D>` then `qrt_attn_merge_d<D>`): one query row per sequence, the
// sequence's context split into partitions of `args.partition` tokens (flash-decoding): each
// block scores one partition for one KV head and writes its unnormalised output with its
// maximum and sum; the merge kernel rescales and combines the partitions.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kTileQ = 32;
constexpr int kTileK = 32;
constexpr int kMaxGroup = 8;
constexpr int kDecodeThreads = 128;
constexpr int kMaxPartition = 128;

__device__ __forceinline__ uint32_t slot_of(const uint32_t* table, uint32_t t, uint32_t bs) {
    return table[t / bs] * bs + t % bs;
}

// Loads 8 f16 values (16 bytes) as floats.
__device__ __forceinline__ void load8(const __half* p, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = qrt::Half16<__half>::to_float2(w[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// Query rows per prefill tile: 32 for D = 64, 16 for D = 128 (at most 256 threads a block).
template <int D>
__host__ __device__ constexpr int tile_q() {
    return kTileQ * 64 / D;
}

template <int D>
__device__ __forceinline__ void attn_prefill(const qrt_attn_args& args) {
    constexpr int TPR = D / 64;  // threads per (query row, head)
    __shared__ float ks[kTileK][D];
    __shared__ float vs[kTileK][D];

    const uint2 tile = reinterpret_cast<const uint2*>(args.work)[blockIdx.x];
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[tile.x];
    const uint32_t* table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    const unsigned q0 = tile.y;
    const unsigned kvh = blockIdx.y;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned tid = threadIdx.x;
    const unsigned part = tid % TPR;
    const unsigned g = (tid / TPR) % group;
    const unsigned qi = tid / (TPR * group);
    const bool active = q0 + qi < seq.len;
    const unsigned row = seq.start + min(q0 + qi, seq.len - 1);
    const unsigned h = kvh * group + g;
    const unsigned q_stride = args.num_heads * D;

    const float* q = reinterpret_cast<const float*>(args.q) + static_cast<size_t>(row) * q_stride +
                     h * D;
    float qr[64];
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        qr[i] = q[part + TPR * i] * args.scale;
        acc[i] = 0.f;
    }
    float m = -INFINITY;
    float l = 0.f;
    const unsigned kv_end = seq.past + min(q0 + tile_q<D>(), seq.len);
    const unsigned limit = seq.past + q0 + qi;  // last key this row may see
    const __half* kc = reinterpret_cast<const __half*>(args.k_cache);
    const __half* vc = reinterpret_cast<const __half*>(args.v_cache);
    const unsigned kv_heads = args.num_kv_heads;

    for (unsigned t0 = 0; t0 < kv_end; t0 += kTileK) {
        __syncthreads();
        for (unsigned e = tid; e < kTileK * D / 8; e += blockDim.x) {
            const unsigned j = e / (D / 8);
            const unsigned d = (e % (D / 8)) * 8;
            const unsigned t = t0 + j;
            float kf[8], vf[8];
            if (t < kv_end) {
                const size_t off =
                    (static_cast<size_t>(slot_of(table, t, args.block_size)) * kv_heads + kvh) * D +
                    d;
                load8(kc + off, kf);
                load8(vc + off, vf);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) kf[i] = vf[i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                ks[j][d + i] = kf[i];
                vs[j][d + i] = vf[i];
            }
        }
        __syncthreads();
        float s[kTileK];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < kTileK; ++j) {
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < 64; ++i) dot = fmaf(qr[i], ks[j][part + TPR * i], dot);
            if (TPR == 2) dot += __shfl_xor_sync(qrt::kFull, dot, 1);
            s[j] = (t0 + j <= limit) ? dot : -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        if (m_new == -INFINITY) continue;  // every key of this tile is masked for this row
        const float corr = expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] *= corr;
#pragma unroll
        for (int j = 0; j < kTileK; ++j) {
            const float p = expf(s[j] - m_new);
            l += p;
#pragma unroll
            for (int i = 0; i < 64; ++i) acc[i] = fmaf(p, vs[j][part + TPR * i], acc[i]);
        }
        m = m_new;
    }
    if (!active) return;
    float* out = reinterpret_cast<float*>(args.out) + static_cast<size_t>(row) * q_stride + h * D;
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < 64; ++i) out[part + TPR * i] = acc[i] * inv;
}

// Partial results of the decode splits, in `args.work`: the unnormalised outputs
// [seqs][heads][splits][D], then the maxima [seqs][heads][splits], then the sums.
struct Partials {
    float* acc;
    float* max;
    float* sum;
    __device__ Partials(const qrt_attn_args& args, unsigned d) {
        const size_t n = static_cast<size_t>(args.num_seqs) * args.num_heads * args.splits;
        acc = reinterpret_cast<float*>(args.work);
        max = acc + n * d;
        sum = max + n;
    }
};

template <int D>
__device__ __forceinline__ void attn_decode(const qrt_attn_args& args) {
    __shared__ float qs[kMaxGroup][D];
    __shared__ float scores[kMaxGroup][kMaxPartition];
    __shared__ float stats[kMaxGroup];

    const unsigned s_idx = blockIdx.x;
    const unsigned kvh = blockIdx.y;
    const unsigned split = blockIdx.z;
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[s_idx];
    const uint32_t* table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned ctx = seq.past + seq.len;
    const unsigned t_begin = split * args.partition;
    const unsigned t_end = min(t_begin + args.partition, ctx);
    const unsigned tid = threadIdx.x;
    const Partials parts(args, D);
    const size_t base = (static_cast<size_t>(s_idx) * args.num_heads + kvh * group) * args.splits +
                        split;  // partial index of (this sequence, head kvh * group, this split)

    if (t_begin >= ctx) {
        if (tid < group) {
            parts.max[base + tid * args.splits] = -INFINITY;
            parts.sum[base + tid * args.splits] = 0.f;
        }
        return;
    }
    const unsigned row = seq.start + seq.len - 1;
    const float* q = reinterpret_cast<const float*>(args.q) +
                     static_cast<size_t>(row) * args.num_heads * D + kvh * group * D;
    for (unsigned i = tid; i < group * D; i += blockDim.x) qs[i / D][i % D] = q[i] * args.scale;
    __syncthreads();

    const __half* kc = reinterpret_cast<const __half*>(args.k_cache);
    const __half* vc = reinterpret_cast<const __half*>(args.v_cache);
    const unsigned kv_heads = args.num_kv_heads;
    const unsigned n = t_end - t_begin;
    for (unsigned t = tid; t < n; t += blockDim.x) {
        const size_t off =
            (static_cast<size_t>(slot_of(table, t_begin + t, args.block_size)) * kv_heads + kvh) *
            D;
        // The row stays in L1 after the first head of the group reads it.
        for (unsigned g = 0; g < group; ++g) {
            float dot = 0.f;
#pragma unroll
            for (int c = 0; c < D / 8; ++c) {
                float kf[8];
                load8(kc + off + 8 * c, kf);
#pragma unroll
                for (int i = 0; i < 8; ++i) dot = fmaf(qs[g][8 * c + i], kf[i], dot);
            }
            scores[g][t] = dot;
        }
    }
    __syncthreads();

    // Softmax statistics: warp w handles heads w, w + 4, ...
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    for (unsigned g = warp; g < group; g += blockDim.x / qrt::kWarp) {
        float mx = -INFINITY;
        for (unsigned t = lane; t < n; t += qrt::kWarp) mx = fmaxf(mx, scores[g][t]);
        mx = qrt::warp_max(mx);
        float sum = 0.f;
        for (unsigned t = lane; t < n; t += qrt::kWarp) {
            const float p = expf(scores[g][t] - mx);
            scores[g][t] = p;
            sum += p;
        }
        sum = qrt::warp_sum(sum);
        if (lane == 0) {
            stats[g] = mx;
            parts.max[base + g * args.splits] = mx;
            parts.sum[base + g * args.splits] = sum;
        }
    }
    __syncthreads();

    // Weighted values: thread (g0, d) accumulates dimension d of heads g0, g0 + step, ...
    constexpr unsigned kStep = kDecodeThreads / D;
    const unsigned d = tid % D;
    const unsigned g0 = tid / D;
    float acc[kMaxGroup] = {};
    for (unsigned t = 0; t < n; ++t) {
        const size_t off =
            (static_cast<size_t>(slot_of(table, t_begin + t, args.block_size)) * kv_heads + kvh) *
                D +
            d;
        const float v = __half2float(vc[off]);
#pragma unroll
        for (int i = 0; i < kMaxGroup; ++i) {
            const unsigned g = g0 + i * kStep;
            if (i * kStep < kMaxGroup && g < group) acc[i] = fmaf(scores[g][t], v, acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < kMaxGroup; ++i) {
        const unsigned g = g0 + i * kStep;
        if (i * kStep < kMaxGroup && g < group) parts.acc[(base + g * args.splits) * D + d] = acc[i];
    }
}

template <int D>
__device__ __forceinline__ void attn_merge(const qrt_attn_args& args) {
    const unsigned s_idx = blockIdx.x;
    const unsigned h = blockIdx.y;
    const unsigned d = threadIdx.x;
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[s_idx];
    const unsigned ctx = seq.past + seq.len;
    const unsigned active = min((ctx + args.partition - 1) / args.partition, args.splits);
    const Partials parts(args, D);
    const size_t base = (static_cast<size_t>(s_idx) * args.num_heads + h) * args.splits;
    float mx = -INFINITY;
    for (unsigned s = 0; s < active; ++s) mx = fmaxf(mx, parts.max[base + s]);
    float sum = 0.f;
    float out = 0.f;
    for (unsigned s = 0; s < active; ++s) {
        const float w = expf(parts.max[base + s] - mx);
        sum = fmaf(parts.sum[base + s], w, sum);
        out = fmaf(parts.acc[(base + s) * D + d], w, out);
    }
    const unsigned row = seq.start + seq.len - 1;
    reinterpret_cast<float*>(args.out)[static_cast<size_t>(row) * args.num_heads * D + h * D + d] =
        out / sum;
}

}  // namespace

#define QRT_ATTN(D)                                                                            \
    extern "C" __global__ void __launch_bounds__(kTileQ * kMaxGroup)                \
        qrt_attn_prefill_d##D(const qrt_attn_args args) {                                      \
        attn_prefill<D>(args);                                                                 \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(kDecodeThreads)                               \
        qrt_attn_decode_d##D(const qrt_attn_args args) {                                       \
        attn_decode<D>(args);                                                                  \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(D) qrt_attn_merge_d##D(const qrt_attn_args args) { \
        attn_merge<D>(args);                                                                   \
    }

QRT_ATTN(64)
QRT_ATTN(128)
