// Attention over the paged KV cache (f16 K and V pools, f32 queries and outputs), grouped-query
// aware: one thread block serves all the query heads of one key/value head, so each K and V
// element is read once for the whole group.
//
// Prefill (`qrt_attn_prefill_d<D>`): flash-style tiling. A block takes a tile of up to 16 query
// rows (8 when D = 128) of one sequence (from the tile list in `args.work`) for one KV head;
// keys and values stream through shared memory 32 tokens at a time, and each (query row, head)
// is kept by D / 16 adjacent threads, 16 dimensions each, with a running maximum, sum and
// output (online softmax), so no score matrix is ever stored.
//
// Decode (`qrt_attn_decode_d<D>`): one query row per sequence, the sequence's context split
// into partitions of `args.partition` tokens (flash-decoding): each block scores one partition
// for one KV head and writes its unnormalised output with its maximum and sum; the last block
// of a (sequence, KV head) to finish rescales and combines the partitions.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kTileK = 32;
constexpr int kMaxGroup = 8;
constexpr int kDecodeThreads = 128;
constexpr int kMaxPartition = 64;

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

// Query rows per prefill tile: 16 for D = 64, 8 for D = 128, so that a block has
// 64 * group threads (at most 512).
__host__ __device__ constexpr int tile_q(int d) {
    return 1024 / d;
}

template <int D>
__device__ __forceinline__ void attn_prefill(const qrt_attn_args& args) {
    constexpr int kDims = 16;           // dimensions per thread
    constexpr int kParts = D / kDims;   // threads per (query row, head), adjacent lanes
    constexpr int kPad = kTileK + 4;    // row stride of the transposed keys: 16-byte aligned,
                                        // and the kParts rows a warp reads hit different banks
    __shared__ __align__(16) float kt[D][kPad];  // keys transposed: dimension-major
    __shared__ float vs[kTileK][D];

    qrt::pdl_enter();
    const uint2 tile = reinterpret_cast<const uint2*>(args.work)[blockIdx.x];
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[tile.x];
    const uint32_t* table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    const unsigned q0 = tile.y;
    const unsigned kvh = blockIdx.y;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned tid = threadIdx.x;
    const unsigned part = tid % kParts;
    const unsigned g = (tid / kParts) % group;
    const unsigned qi = tid / (kParts * group);
    const bool active = q0 + qi < seq.len;
    const unsigned row = seq.start + min(q0 + qi, seq.len - 1);
    const unsigned h = kvh * group + g;
    const unsigned q_stride = args.num_heads * D;

    const float* q = reinterpret_cast<const float*>(args.q) + static_cast<size_t>(row) * q_stride +
                     h * D;
    float qr[kDims];
    float acc[kDims];
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
        qr[i] = q[part + kParts * i] * args.scale;
        acc[i] = 0.f;
    }
    float m = -INFINITY;
    float l = 0.f;
    const unsigned kv_end = seq.past + min(q0 + tile_q(D), seq.len);
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
                kt[d + i][j] = kf[i];
                vs[j][d + i] = vf[i];
            }
        }
        __syncthreads();
        // Partial scores over this thread's dimensions: 32 independent sums, four keys per
        // shared-memory load; then summed over the row's kParts threads.
        float s[kTileK];
#pragma unroll
        for (int j = 0; j < kTileK; ++j) s[j] = 0.f;
#pragma unroll
        for (int i = 0; i < kDims; ++i) {
            const float qv = qr[i];
            const float4* krow = reinterpret_cast<const float4*>(kt[part + kParts * i]);
#pragma unroll
            for (int j4 = 0; j4 < kTileK / 4; ++j4) {
                const float4 k4 = krow[j4];
                s[4 * j4] = fmaf(qv, k4.x, s[4 * j4]);
                s[4 * j4 + 1] = fmaf(qv, k4.y, s[4 * j4 + 1]);
                s[4 * j4 + 2] = fmaf(qv, k4.z, s[4 * j4 + 2]);
                s[4 * j4 + 3] = fmaf(qv, k4.w, s[4 * j4 + 3]);
            }
        }
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < kTileK; ++j) {
#pragma unroll
            for (int o = 1; o < kParts; o *= 2) s[j] += __shfl_xor_sync(qrt::kFull, s[j], o);
            s[j] = (t0 + j <= limit) ? s[j] : -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        if (m_new == -INFINITY) continue;  // every key of this tile is masked for this row
        const float corr = expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int i = 0; i < kDims; ++i) acc[i] *= corr;
#pragma unroll
        for (int j = 0; j < kTileK; ++j) {
            const float p = expf(s[j] - m_new);
            l += p;
#pragma unroll
            for (int i = 0; i < kDims; ++i) acc[i] = fmaf(p, vs[j][part + kParts * i], acc[i]);
        }
        m = m_new;
    }
    if (!active) return;
    float* out = reinterpret_cast<float*>(args.out) + static_cast<size_t>(row) * q_stride + h * D;
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < kDims; ++i) out[part + kParts * i] = acc[i] * inv;
}

// Partial results of the decode splits, in `args.work`: the unnormalised outputs
// [seqs][heads][splits][D], then the maxima [seqs][heads][splits], then the sums, then one
// u32 arrival counter per (sequence, KV head), zero between launches.
struct Partials {
    float* acc;
    float* max;
    float* sum;
    uint32_t* arrivals;
    __device__ Partials(const qrt_attn_args& args, unsigned d) {
        const size_t n = static_cast<size_t>(args.num_seqs) * args.num_heads * args.splits;
        acc = reinterpret_cast<float*>(args.work);
        max = acc + n * d;
        sum = max + n;
        arrivals = reinterpret_cast<uint32_t*>(sum + n);
    }
};

// One block per (sequence, KV head, partition of at most kMaxPartition tokens): K and V of the
// partition are staged in shared memory with 16-byte loads, every thread scores whole keys
// against the group's queries, and the partition's unnormalised output, maximum and sum go to
// `args.work`. The last block of a (sequence, KV head) to finish merges all partitions.
template <int D>
__device__ __forceinline__ void attn_decode(const qrt_attn_args& args) {
    constexpr unsigned kWords = D / 2;        // half2 words of a K row
    constexpr unsigned kStride = kWords + 1;  // odd row stride: column reads hit 32 banks
    __shared__ uint32_t ks[kMaxPartition * kStride];
    __shared__ __align__(16) __half vs[kMaxPartition][D];
    __shared__ float qs[kMaxGroup][D];
    __shared__ float scores[kMaxGroup][kMaxPartition];
    __shared__ bool last;

    qrt::pdl_enter();
    const unsigned s_idx = blockIdx.x;
    const unsigned kvh = blockIdx.y;
    const unsigned split = blockIdx.z;
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[s_idx];
    const uint32_t* table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned ctx = seq.past + seq.len;
    const unsigned t_begin = split * args.partition;
    if (t_begin >= ctx) return;  // beyond this sequence's context: not counted
    const unsigned n = min(args.partition, ctx - t_begin);
    const unsigned tid = threadIdx.x;
    const Partials parts(args, D);
    const size_t base = (static_cast<size_t>(s_idx) * args.num_heads + kvh * group) * args.splits;

    const unsigned row = seq.start + seq.len - 1;
    const float* q = reinterpret_cast<const float*>(args.q) +
                     static_cast<size_t>(row) * args.num_heads * D + kvh * group * D;
    const float* inv_freq = reinterpret_cast<const float*>(args.inv_freq);
    const float pos = static_cast<float>(ctx - 1);  // the query's position
    if (inv_freq == nullptr) {
        for (unsigned i = tid; i < group * D; i += blockDim.x) qs[i / D][i % D] = q[i] * args.scale;
    } else {
        for (unsigned i = tid; i < group * D / 2; i += blockDim.x) {
            const unsigned g = i / (D / 2);
            const unsigned j = i % (D / 2);
            float sn, cs;
            sincosf(pos * inv_freq[j], &sn, &cs);
            const float x1 = q[g * D + j];
            const float x2 = q[g * D + j + D / 2];
            qs[g][j] = (x1 * cs - x2 * sn) * args.scale;
            qs[g][j + D / 2] = (x2 * cs + x1 * sn) * args.scale;
        }
    }
    const __half* kc = reinterpret_cast<const __half*>(args.k_cache);
    const __half* vc = reinterpret_cast<const __half*>(args.v_cache);
    for (unsigned e = tid; e < n * (D / 8); e += blockDim.x) {
        const unsigned t = e / (D / 8);
        const unsigned c = e % (D / 8);
        const size_t off =
            (static_cast<size_t>(slot_of(table, t_begin + t, args.block_size)) * args.num_kv_heads +
             kvh) * D + c * 8;
        if (inv_freq != nullptr && t_begin + t == ctx - 1) {
            // The newest token: rotate its key, store key and value in the cache, stage both.
            const size_t nrow = (static_cast<size_t>(row) * args.num_kv_heads + kvh) * D;
            const float* kn = reinterpret_cast<const float*>(args.k_new) + nrow;
            const float* vn = reinterpret_cast<const float*>(args.v_new) + nrow;
            __align__(16) __half kh[8];
            __align__(16) __half vh[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const unsigned d = c * 8 + i;
                const unsigned j = d % (D / 2);
                float sn, cs;
                sincosf(pos * inv_freq[j], &sn, &cs);
                const float x1 = kn[j];
                const float x2 = kn[j + D / 2];
                kh[i] = __float2half_rn(d < D / 2 ? x1 * cs - x2 * sn : x2 * cs + x1 * sn);
                vh[i] = __float2half_rn(vn[d]);
            }
            const uint4 kv = *reinterpret_cast<const uint4*>(kh);
            const uint4 vv = *reinterpret_cast<const uint4*>(vh);
            *reinterpret_cast<uint4*>(const_cast<__half*>(kc) + off) = kv;
            *reinterpret_cast<uint4*>(const_cast<__half*>(vc) + off) = vv;
            uint32_t* kd = ks + t * kStride + c * 4;
            kd[0] = kv.x;
            kd[1] = kv.y;
            kd[2] = kv.z;
            kd[3] = kv.w;
            *reinterpret_cast<uint4*>(&vs[t][c * 8]) = vv;
            continue;
        }
        const uint4 kv = *reinterpret_cast<const uint4*>(kc + off);
        uint32_t* kd = ks + t * kStride + c * 4;
        kd[0] = kv.x;
        kd[1] = kv.y;
        kd[2] = kv.z;
        kd[3] = kv.w;
        *reinterpret_cast<uint4*>(&vs[t][c * 8]) = *reinterpret_cast<const uint4*>(vc + off);
    }
    __syncthreads();

    // Scores: thread (t, g0) scores key t against heads g0, g0 + 2, ...
    constexpr unsigned kHeadsPerThread = kMaxGroup / 2;
    {
        const unsigned t = tid % kMaxPartition;
        const unsigned g0 = tid / kMaxPartition;
        if (t < n) {
            float dot[kHeadsPerThread] = {};
            for (unsigned w = 0; w < kWords; ++w) {
                const float2 k2 = qrt::Half16<__half>::to_float2(ks[t * kStride + w]);
#pragma unroll
                for (unsigned i = 0; i < kHeadsPerThread; ++i) {
                    const unsigned g = g0 + 2 * i;
                    if (g < group) {
                        dot[i] = fmaf(qs[g][2 * w], k2.x, dot[i]);
                        dot[i] = fmaf(qs[g][2 * w + 1], k2.y, dot[i]);
                    }
                }
            }
#pragma unroll
            for (unsigned i = 0; i < kHeadsPerThread; ++i) {
                const unsigned g = g0 + 2 * i;
                if (g < group) scores[g][t] = dot[i];
            }
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
            parts.max[base + g * args.splits + split] = mx;
            parts.sum[base + g * args.splits + split] = sum;
        }
    }
    __syncthreads();

    // Weighted values: thread (g0, d) accumulates dimension d of heads g0, g0 + step, ...
    constexpr unsigned kStep = kDecodeThreads / D;
    const unsigned d = tid % D;
    const unsigned g0 = tid / D;
    float acc[kMaxGroup] = {};
    for (unsigned t = 0; t < n; ++t) {
        const float v = __half2float(vs[t][d]);
#pragma unroll
        for (unsigned i = 0; i < kMaxGroup; ++i) {
            const unsigned g = g0 + i * kStep;
            if (i * kStep < kMaxGroup && g < group) acc[i] = fmaf(scores[g][t], v, acc[i]);
        }
    }
#pragma unroll
    for (unsigned i = 0; i < kMaxGroup; ++i) {
        const unsigned g = g0 + i * kStep;
        if (i * kStep < kMaxGroup && g < group)
            parts.acc[(base + g * args.splits + split) * D + d] = acc[i];
    }

    // The last partition of this (sequence, KV head) to arrive merges them all.
    const unsigned active = (ctx + args.partition - 1) / args.partition;
    uint32_t* arrivals = parts.arrivals + s_idx * args.num_kv_heads + kvh;
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(arrivals, 1u) == active - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Per head, the partitions' common maximum and total (warp w: heads w, w + 4, ...), read
    // with loads that bypass L1 (other blocks wrote them).
    __shared__ float merged_max[kMaxGroup];
    __shared__ float merged_inv[kMaxGroup];
    for (unsigned g = warp; g < group; g += blockDim.x / qrt::kWarp) {
        const size_t hb = base + g * args.splits;
        float mx = -INFINITY;
        for (unsigned s = lane; s < active; s += qrt::kWarp) mx = fmaxf(mx, __ldcg(parts.max + hb + s));
        mx = qrt::warp_max(mx);
        float sum = 0.f;
        for (unsigned s = lane; s < active; s += qrt::kWarp)
            sum = fmaf(__ldcg(parts.sum + hb + s), expf(__ldcg(parts.max + hb + s) - mx), sum);
        sum = qrt::warp_sum(sum);
        if (lane == 0) {
            merged_max[g] = mx;
            merged_inv[g] = 1.f / sum;
        }
    }
    __syncthreads();
    for (unsigned i = tid; i < group * D; i += blockDim.x) {
        const unsigned g = i / D;
        const unsigned dd = i % D;
        const size_t hb = base + g * args.splits;
        float out = 0.f;
#pragma unroll 4
        for (unsigned s = 0; s < active; ++s) {
            const float w = expf(__ldcg(parts.max + hb + s) - merged_max[g]);
            out = fmaf(__ldcg(parts.acc + (hb + s) * D + dd), w, out);
        }
        reinterpret_cast<float*>(args.out)[static_cast<size_t>(row) * args.num_heads * D +
                                           (kvh * group + g) * D + dd] = out * merged_inv[g];
    }
    if (tid == 0) *arrivals = 0;  // ready for the next launch
}

}  // namespace

#define QRT_ATTN(D)                                                                            \
    extern "C" __global__ void __launch_bounds__(64 * kMaxGroup)                         \
        qrt_attn_prefill_d##D(const qrt_attn_args args) {                                      \
        attn_prefill<D>(args);                                                                 \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(kDecodeThreads)                               \
        qrt_attn_decode_d##D(const qrt_attn_args args) {                                       \
        attn_decode<D>(args);                                                                  \
    }

QRT_ATTN(64)
QRT_ATTN(128)
