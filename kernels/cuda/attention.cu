// Attention over the paged KV cache (f16 K and V pools, f32 queries and outputs), grouped-query
// aware: one thread block serves all the query heads of one key/value head, so each K and V
// element is read once for the whole group.
//
// Prefill (`qrt_attn_prefill_d<D>`): flash-attention tiling on tensor cores. A block takes
// 64 / group query rows of one sequence for one KV head (64 (row, head) pairs, 16 per warp);
// keys and values stream through shared memory, and each pair keeps a running maximum, sum and
// output (online softmax), so no score matrix is ever stored. The block's two halves take
// alternate key tiles and merge their results at the end, halving the chain of tiles a long
// row waits on.
//
// Decode (`qrt_attn_decode_d<D>_g<G>`, G the largest group it serves): one query row per
// sequence, the sequence's context split into partitions of `args.partition` tokens
// (flash-decoding): each block scores one partition for one KV head, keys and values in
// registers, and writes its unnormalised output with its maximum and sum; the partitions are
// rescaled and combined by the first block of their thread-block cluster (`_cluster`, sm_90) or
// else by the last block of a (sequence, KV head) to finish. `qrt_attn_decode_tc_d<D>_g<G>` does
// the same for longer partitions on the tensor cores, keys and values staged in shared memory.

#include <cooperative_groups.h>

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kMaxGroup = 8;
constexpr int kPrefillWarps = 4;                   // warps of one half of a prefill block
constexpr int kPrefillPairs = 16 * kPrefillWarps;  // (query row, head) pairs per block
constexpr int kPrefillHalfThreads = kPrefillWarps * qrt::kWarp;
constexpr int kMaxPartition = 64;

__device__ __forceinline__ uint32_t slot_of(const uint32_t* table, uint32_t t, uint32_t bs) {
    return table[t / bs] * bs + t % bs;
}

// The 8 f16 values of `w` as floats.
__device__ __forceinline__ void unpack8(const uint4& w, float* out) {
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = qrt::Half16<__half>::to_float2(words[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// Prefill geometry for head dimension D: each warp computes 16 (query row, head) pairs with
// mma.sync, kPrefillWarps warps per half block; keys and values pass through shared memory kKeys
// at a time (double-buffered with cp.async, a pair of buffers per half), in rows padded to
// kStride halves so that the 8 rows a fragment load touches fall in different banks. The
// block's dynamic shared memory is kSharedBytes (`prefill_shared_bytes` in launch/attention.rs:
// keep the two in step); after the key loop it holds the second half's results, kMerged floats a
// thread.
template <int D>
struct PrefillShape {
    static constexpr int kKeys = D == 64 ? 64 : 32;
    static constexpr int kStride = D + 8;
    static constexpr int kBuffer = kKeys * kStride;  // halves of one key or value buffer
    static constexpr int kDimSteps = D / 16;   // k-steps of Q K^T
    static constexpr int kKeyBlocks = kKeys / 8;  // 8-key column blocks of the scores
    static constexpr int kDimBlocks = D / 8;      // 8-dimension column blocks of the output
    // Two halves of two key and two value buffers of 16-bit values.
    static constexpr int kSharedBytes = 2 * 4 * kBuffer * 2;
    static constexpr int kMerged = 4 * kDimBlocks + 4;  // a thread's outputs, maxima and sums
    static_assert(kMerged * 4 * kPrefillHalfThreads <= kSharedBytes, "merge fits the buffers");
};

// The mma fragment halves (low = the first column) of two floats.
__device__ __forceinline__ uint32_t half2_bits(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}

// Prefill on tensor cores (flash-attention 2 style). A block takes a tile of
// kPrefillPairs / group query rows of one sequence (from the tile list in `args.work`) for one
// KV head, as kPrefillPairs (row, head) pairs, pair v being row v / group and head v % group,
// so that each key and value is loaded once for the whole group. Queries are scaled by
// scale * log2(e) and rounded to f16; scores accumulate in f32 and the softmax runs in base 2
// with a running maximum and sum per pair; probabilities are rounded to f16 for P V. Half h of
// the block (warps 4h..4h+3, the same pairs in both) takes key tiles h, h + 2, ...; the second
// half's maxima, sums and outputs then pass through shared memory to the first, which rescales
// both to the larger maximum, adds them and stores the result.
template <int D>
__device__ __forceinline__ void attn_prefill(const qrt_attn_args& args) {
    using P = PrefillShape<D>;
    extern __shared__ __align__(16) uint8_t prefill_shared[];

    qrt::pdl_enter();
    // Block b takes tile b / num_kv_heads for KV head b % num_kv_heads, so that the tiles
    // start in the order of their list.
    const uint2 tile = reinterpret_cast<const uint2*>(args.work)[blockIdx.x / args.num_kv_heads];
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[tile.x];
    const uint32_t* table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    const unsigned q0 = tile.y;
    const unsigned kvh = blockIdx.x % args.num_kv_heads;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned rows = kPrefillPairs / group;
    const unsigned half = threadIdx.x / kPrefillHalfThreads;
    const unsigned tid = threadIdx.x % kPrefillHalfThreads;  // the thread within its half
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    const unsigned gr = lane / 4;  // fragment row (and row + 8)
    const unsigned tc = lane % 4;  // fragment column pair
    const unsigned q_stride = args.num_heads * D;
    const unsigned kv_end = seq.past + min(q0 + rows, seq.len);  // keys [0, kv_end)
    // This half's key and value buffers.
    __half* const ks = reinterpret_cast<__half*>(prefill_shared) + half * 4 * P::kBuffer;
    __half* const vs = ks + 2 * P::kBuffer;

    // This lane's two pairs: fragment rows gr and gr + 8 of the warp's 16.
    size_t at[2];      // offset of the pair's query (and output) row and head
    unsigned pos[2];   // the query's position: it sees keys 0 ..= pos
    bool valid[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const unsigned v = 16 * warp + gr + 8 * i;
        const unsigned r = v / group;
        valid[i] = r < rows && q0 + r < seq.len;
        const unsigned qr = valid[i] ? q0 + r : q0;
        at[i] = static_cast<size_t>(seq.start + qr) * q_stride + (kvh * group + v % group) * D;
        pos[i] = seq.past + qr;
    }
    const float* q = reinterpret_cast<const float*>(args.q);
    const float qscale = args.scale * 1.4426950408889634f;
    uint32_t qa[P::kDimSteps][4];
#pragma unroll
    for (int kk = 0; kk < P::kDimSteps; ++kk) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float2 f = __ldcg(reinterpret_cast<const float2*>(
                    q + at[i] + kk * 16 + c * 8 + 2 * tc));
                qa[kk][i + 2 * c] = half2_bits(f.x * qscale, f.y * qscale);
            }
        }
    }

    const __half* kc = reinterpret_cast<const __half*>(args.k_cache);
    const __half* vc = reinterpret_cast<const __half*>(args.v_cache);
    // Keys and values t0 .. t0 + kKeys - 1 into this half's buffer `buf` (zeros past kv_end).
    auto stage = [&](int buf, unsigned t0) {
        const uint32_t kb =
            static_cast<uint32_t>(__cvta_generic_to_shared(ks + buf * P::kBuffer));
        const uint32_t vb =
            static_cast<uint32_t>(__cvta_generic_to_shared(vs + buf * P::kBuffer));
        for (unsigned e = tid; e < P::kKeys * D / 8; e += kPrefillHalfThreads) {
            const unsigned j = e / (D / 8);
            const unsigned c = (e % (D / 8)) * 8;
            const unsigned t = t0 + j;
            const bool in = t < kv_end;
            const size_t off =
                (static_cast<size_t>(slot_of(table, in ? t : 0, args.block_size)) *
                     args.num_kv_heads + kvh) * D + c;
            const uint32_t dst = (j * P::kStride + c) * 2;
            qrt::cp_async16(kb + dst, kc + off, in);
            qrt::cp_async16(vb + dst, vc + off, in);
        }
        qrt::cp_async_commit();
    };

    float o[P::kDimBlocks][4];
#pragma unroll
    for (int b = 0; b < P::kDimBlocks; ++b) o[b][0] = o[b][1] = o[b][2] = o[b][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.f, 0.f};
    const unsigned tiles = (kv_end + P::kKeys - 1) / P::kKeys;
    const unsigned mine = tiles > half ? (tiles - half + 1) / 2 : 0;  // tiles half, half + 2, ..
    if (mine > 0) stage(0, half * P::kKeys);
    for (unsigned it = 0; it < mine; ++it) {
        const int buf = it & 1;
        if (it + 1 < mine) {
            stage(buf ^ 1, (half + 2 * (it + 1)) * P::kKeys);
            qrt::cp_async_wait<1>();
        } else {
            qrt::cp_async_wait<0>();
        }
        qrt::named_barrier(1 + half, kPrefillHalfThreads);
        const unsigned t0 = (half + 2 * it) * P::kKeys;
        const __half* kt = ks + buf * P::kBuffer;
        float sc[P::kKeyBlocks][4];
#pragma unroll
        for (int nb = 0; nb < P::kKeyBlocks; ++nb) {
            sc[nb][0] = sc[nb][1] = sc[nb][2] = sc[nb][3] = 0.f;
            const __half* krow = kt + (nb * 8 + gr) * P::kStride + 2 * tc;
#pragma unroll
            for (int kk = 0; kk < P::kDimSteps; ++kk) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kk * 16);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8);
                qrt::mma16816<__half>(sc[nb], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
            }
        }
        // Causal mask, then the running maximum and sum of each pair (a row's 4 lanes agree).
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mx = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < P::kKeyBlocks; ++nb) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const unsigned key = t0 + nb * 8 + 2 * tc + j;
                    float& x = sc[nb][2 * i + j];
                    x = key <= pos[i] ? x : -INFINITY;
                    mx = fmaxf(mx, x);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 2));
            const float m_new = fmaxf(m[i], mx);
            const float base = m_new == -INFINITY ? 0.f : m_new;  // nothing seen yet
            const float corr = exp2f(m[i] - base);
            m[i] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int nb = 0; nb < P::kKeyBlocks; ++nb) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    float& x = sc[nb][2 * i + j];
                    x = exp2f(x - base);
                    sum += x;
                }
            }
            l[i] = l[i] * corr + sum;
#pragma unroll
            for (int b = 0; b < P::kDimBlocks; ++b) {
                o[b][2 * i] *= corr;
                o[b][2 * i + 1] *= corr;
            }
        }
        // O += P V: the scores' registers are P's A fragments; V's B fragments come from
        // transposed ldmatrix reads (matrices: keys 0-7 / 8-15 of the step x 2 dimension blocks).
        const uint32_t vb =
            static_cast<uint32_t>(__cvta_generic_to_shared(vs + buf * P::kBuffer));
#pragma unroll
        for (int kk = 0; kk < P::kKeys / 16; ++kk) {
            const uint32_t a0 = half2_bits(sc[2 * kk][0], sc[2 * kk][1]);
            const uint32_t a1 = half2_bits(sc[2 * kk][2], sc[2 * kk][3]);
            const uint32_t a2 = half2_bits(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            const uint32_t a3 = half2_bits(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
            const unsigned key = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
            for (int db = 0; db < P::kDimBlocks / 2; ++db) {
                const unsigned dim = (2 * db + (lane >> 4)) * 8;
                uint32_t r[4];
                qrt::ldmatrix_x4_trans(r, vb + (key * P::kStride + dim) * 2);
                qrt::mma16816<__half>(o[2 * db], a0, a1, a2, a3, r[0], r[1]);
                qrt::mma16816<__half>(o[2 * db + 1], a0, a1, a2, a3, r[2], r[3]);
            }
        }
        // Every warp of the half is done with the buffer before the half refills it.
        qrt::named_barrier(1 + half, kPrefillHalfThreads);
    }

    // The second half's results (in the same fragment layout: its thread `tid` holds the same
    // pairs) over the buffers, value j of thread t at j * kPrefillHalfThreads + t.
    float* const merged = reinterpret_cast<float*>(prefill_shared);
    constexpr int kOuts = 4 * P::kDimBlocks;  // then 2 maxima and 2 sums
    __syncthreads();
    if (half == 1) {
#pragma unroll
        for (int b = 0; b < P::kDimBlocks; ++b)
#pragma unroll
            for (int j = 0; j < 4; ++j) merged[(4 * b + j) * kPrefillHalfThreads + tid] = o[b][j];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            merged[(kOuts + i) * kPrefillHalfThreads + tid] = m[i];
            merged[(kOuts + 2 + i) * kPrefillHalfThreads + tid] = l[i];
        }
    }
    __syncthreads();
    if (half == 1) return;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float m2 = merged[(kOuts + i) * kPrefillHalfThreads + tid];
        const float l2 = merged[(kOuts + 2 + i) * kPrefillHalfThreads + tid];
        const float m_new = fmaxf(m[i], m2);
        const float base = m_new == -INFINITY ? 0.f : m_new;  // neither saw a key
        const float c1 = exp2f(m[i] - base), c2 = exp2f(m2 - base);
        l[i] = l[i] * c1 + l2 * c2;
#pragma unroll
        for (int b = 0; b < P::kDimBlocks; ++b)
#pragma unroll
            for (int j = 2 * i; j < 2 * i + 2; ++j)
                o[b][j] = o[b][j] * c1 + merged[(4 * b + j) * kPrefillHalfThreads + tid] * c2;
    }

    float* out = reinterpret_cast<float*>(args.out);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float sum = l[i];
        sum += __shfl_xor_sync(qrt::kFull, sum, 1);
        sum += __shfl_xor_sync(qrt::kFull, sum, 2);
        if (!valid[i]) continue;
        const float inv = 1.f / sum;
#pragma unroll
        for (int b = 0; b < P::kDimBlocks; ++b) {
            *reinterpret_cast<float2*>(out + at[i] + b * 8 + 2 * tc) =
                make_float2(o[b][2 * i] * inv, o[b][2 * i + 1] * inv);
        }
    }
}

// Partial results of the decode splits, in `args.work`: the unnormalised outputs
// [seqs][heads][splits][D], then the maxima [seqs][heads][splits], then the sums, then one
// u32 arrival counter per (sequence, KV head), zero between launches. Deferred (`args.out`
// 0, no cluster) the first index is the sequence's query row, which is how the merging GEMV
// reads them (`merged_chunk` in gemv_tc.cu: keep the two in step), and nothing is merged here.
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

// Decode geometry for head dimension D: a lane holds 8 dimensions (one 16-byte load) of a key
// and of a value, D / 8 adjacent lanes one token, so a warp covers kPerStep tokens per step; the
// block's kWarps warps cover a partition of kMaxPartition tokens in kSteps steps.
template <int D>
struct DecodeShape {
    static constexpr int kLanes = D / 8;
    static constexpr int kPerStep = qrt::kWarp / kLanes;
    static constexpr int kWarps = D / 16;
    static constexpr int kSteps = kMaxPartition / (kWarps * kPerStep);
    static constexpr int kThreads = kWarps * qrt::kWarp;
    // Blocks per multiprocessor the registers must allow for groups of up to G heads: 512
    // threads' worth (128 registers a thread) for up to 4 heads; larger groups need more.
    static constexpr int min_blocks(int g) { return g <= 4 ? 512 / kThreads : 1; }
};

// Partitions whose merge weights merge_partitions_wide keeps in shared memory (later ones are
// computed as they are used).
constexpr unsigned kCachedWeights = 32;

// The start of a merge in global memory: the last of the `active` partitions of a (sequence,
// KV head) to arrive (counted at `arrivals`) returns true, the others false. Before it returns,
// per head of the group (warp w: heads w, w + warps, ...), the partitions' common maximum and
// the inverse of their total are in `merged_max` and `merged_inv`, and (WEIGHTS) the weights
// exp(max - common) / total of the first kCachedWeights partitions in `weights`; read with loads
// that bypass L1 (other blocks wrote them).
template <bool WEIGHTS>
__device__ __forceinline__ bool merge_stats(const qrt_attn_args& args, const Partials& parts,
                                            uint32_t* arrivals, size_t base, unsigned active,
                                            unsigned group, float* merged_max, float* merged_inv,
                                            float (*weights)[kCachedWeights]) {
    __shared__ bool last;
    const unsigned tid = threadIdx.x;
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(arrivals, 1u) == active - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence();
    for (unsigned g = warp; g < group; g += blockDim.x / qrt::kWarp) {
        const size_t hb = base + g * args.splits;
        float mx = -INFINITY;
        for (unsigned s = lane; s < active; s += qrt::kWarp) mx = fmaxf(mx, __ldcg(parts.max + hb + s));
        mx = qrt::warp_max(mx);
        float sum = 0.f;
        for (unsigned s = lane; s < active; s += qrt::kWarp)
            sum = fmaf(__ldcg(parts.sum + hb + s), expf(__ldcg(parts.max + hb + s) - mx), sum);
        sum = qrt::warp_sum(sum);
        if constexpr (WEIGHTS) {
            // (merged_inv's division below is the same value; the compiler computes it once.)
            const float inv = 1.f / sum;
            for (unsigned s = lane; s < min(active, kCachedWeights); s += qrt::kWarp)
                weights[g][s] = expf(__ldcg(parts.max + hb + s) - mx) * inv;
        }
        if (lane == 0) {
            merged_max[g] = mx;
            merged_inv[g] = 1.f / sum;  // in the lane's branch: the serial merge's code as measured
        }
    }
    __syncthreads();
    return true;
}

// The last of the `active` partitions of a (sequence, KV head) to arrive merges them all into
// the output rows of the group's query heads (the other blocks return).
template <int D>
__device__ __forceinline__ void merge_partitions(const qrt_attn_args& args, const Partials& parts,
                                                 size_t base, unsigned active, unsigned group,
                                                 unsigned row) {
    __shared__ float merged_max[kMaxGroup];
    __shared__ float merged_inv[kMaxGroup];
    const unsigned tid = threadIdx.x;
    const unsigned kvh = blockIdx.y;
    uint32_t* arrivals = parts.arrivals + blockIdx.x * args.num_kv_heads + kvh;
    if (!merge_stats<false>(args, parts, arrivals, base, active, group, merged_max, merged_inv,
                            nullptr))
        return;
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

// merge_partitions for many partitions (long contexts: the ring kernel's, and the register
// kernel's out of line): each thread takes 2 outputs at once and requests 8 partitions' values
// of each before adding any, so that a long context's merge waits on few round trips to L2.
// `scratch` (kMaxGroup * kCachedWeights floats of shared memory the block no longer reads: its
// warps' results) holds the weights.
template <int D>
__device__ __forceinline__ void merge_partitions_wide(const qrt_attn_args& args,
                                                      const Partials& parts, size_t base,
                                                      unsigned active, unsigned group,
                                                      unsigned row, float* scratch) {
    constexpr unsigned kOuts = 2, kParts = 8;
    __shared__ float merged_max[kMaxGroup];
    __shared__ float merged_inv[kMaxGroup];
    float(*weights)[kCachedWeights] = reinterpret_cast<float(*)[kCachedWeights]>(scratch);
    const unsigned tid = threadIdx.x;
    const unsigned kvh = blockIdx.y;
    uint32_t* arrivals = parts.arrivals + blockIdx.x * args.num_kv_heads + kvh;
    if (!merge_stats<true>(args, parts, arrivals, base, active, group, merged_max, merged_inv,
                           weights))
        return;
    const unsigned width = group * D;
    float* out = reinterpret_cast<float*>(args.out) +
                 static_cast<size_t>(row) * args.num_heads * D + kvh * width;
    for (unsigned i0 = tid; i0 < width; i0 += kOuts * blockDim.x) {
        float sums[kOuts] = {};
        for (unsigned s0 = 0; s0 < active; s0 += kParts) {
            float v[kOuts][kParts];
#pragma unroll
            for (unsigned u = 0; u < kOuts; ++u) {
                const unsigned i = i0 + u * blockDim.x;
                const size_t at = (base + (i / D) * args.splits + s0) * D + i % D;
#pragma unroll
                for (unsigned t = 0; t < kParts; ++t)
                    v[u][t] = i < width && s0 + t < active ? __ldcg(parts.acc + at + t * D) : 0.f;
            }
#pragma unroll
            for (unsigned u = 0; u < kOuts; ++u) {
                const unsigned g = min((i0 + u * blockDim.x) / D, group - 1);
#pragma unroll
                for (unsigned t = 0; t < kParts; ++t) {
                    const unsigned s = s0 + t;
                    if (s >= active) break;
                    const float w = s < kCachedWeights
                                        ? weights[g][s]
                                        : expf(__ldcg(parts.max + base + g * args.splits + s) -
                                               merged_max[g]) *
                                              merged_inv[g];
                    sums[u] = fmaf(v[u][t], w, sums[u]);
                }
            }
        }
#pragma unroll
        for (unsigned u = 0; u < kOuts; ++u)
            if (i0 + u * blockDim.x < width) out[i0 + u * blockDim.x] = sums[u];
    }
    if (tid == 0) *arrivals = 0;  // ready for the next launch
}

// merge_partitions_wide out of line, for the register kernel: inlined into its 128 registers
// it made the kernel spill.
template <int D>
__device__ __noinline__ void merge_partitions_wide_call(const qrt_attn_args& args,
                                                        const Partials& parts, size_t base,
                                                        unsigned active, unsigned group,
                                                        unsigned row, float* scratch) {
    merge_partitions_wide<D>(args, parts, base, active, group, row, scratch);
}

// 8 floats as f16 values.
__device__ __forceinline__ uint4 pack8(const float* v) {
    __align__(16) __half h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = __float2half_rn(v[i]);
    return *reinterpret_cast<const uint4*>(h);
}

// 8 consecutive floats written by an earlier kernel (read through L2).
__device__ __forceinline__ void load8_cg(const float* p, float* out) {
    const float4 a = __ldcg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldcg(reinterpret_cast<const float4*>(p) + 1);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// Dimensions d0 .. d0 + 7 of a vector rotated at the angles whose sines and cosines are given:
// `own` holds those dimensions and `partner` the ones they pair with (d + D/2, or d - D/2 when
// `high`).
__device__ __forceinline__ void rotate8(const float* own, const float* partner, const float* sn,
                                        const float* cs, bool high, float* out) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
        out[i] = high ? own[i] * cs[i] + partner[i] * sn[i] : own[i] * cs[i] - partner[i] * sn[i];
}

// rotate8 in place for decode's layout (DecodeShape<D>): a token's D / 8 lanes hold 8
// dimensions each, so a lane's partner dimensions are in the lane D / 16 away. Every lane of the
// warp must call it.
template <int D>
__device__ __forceinline__ void rotate_in_warp(float* v, const float* sn, const float* cs,
                                               bool high) {
    float partner[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) partner[i] = __shfl_xor_sync(qrt::kFull, v[i], D / 16);
    rotate8(v, partner, sn, cs, high, v);
}

// Merging the partitions of a (sequence, KV head) that form one thread-block cluster (sm_90):
// every block pushes its partition's unnormalised output, maximum and sum into the shared
// memory of the cluster's first block (the leader: `slots`, `group * (D + 2)` floats per
// partition, dynamic shared memory) and arrives on the leader's mbarrier; the leader waits
// for the active partitions, then combines them from its own shared memory. Only the leader
// waits: the other blocks leave once their stores are released.
namespace cluster_merge {

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// The leader: the barrier counts one arrival per thread of the other active partitions, and
// the cluster barrier that follows publishes it before anyone arrives.
__device__ __forceinline__ void init(uint64_t* bar, unsigned rank, unsigned active) {
#if __CUDA_ARCH__ >= 900
    if (rank == 0 && threadIdx.x == 0 && active > 1) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)),
                     "r"((active - 1) * blockDim.x));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
#endif
}

// Every block before its first access to the leader's shared memory.
__device__ __forceinline__ void wait_started() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait;" ::: "memory");
#endif
}

// A non-leader thread, after its stores into the leader: arrive on the leader's barrier.
__device__ __forceinline__ void arrive_at_leader(uint64_t* bar) {
#if __CUDA_ARCH__ >= 900
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, 0;" : "=r"(remote) : "r"(smem_addr(bar)));
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(remote)
                 : "memory");
#endif
}

// The leader's threads: wait until every other active partition has arrived.
__device__ __forceinline__ void wait_for_partitions(uint64_t* bar) {
#if __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], 0;"
            " selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(smem_addr(bar))
            : "memory");
    }
#endif
}

// The leader's slots as seen from this block (the leader's own shared memory for rank 0).
__device__ __forceinline__ float* leader_slots(float* slots) {
#if __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().map_shared_rank(slots, 0);
#else
    __trap();  // clusters need sm_90; the launcher never takes this kernel below it
    return slots;
#endif
}

}  // namespace cluster_merge

// Where a decode block's partition lies (both decode kernels): block (blockIdx.x, blockIdx.y,
// blockIdx.z) scores partition blockIdx.z of sequence blockIdx.x for KV head blockIdx.y.
struct DecodePartition {
    const uint32_t* table;  // the sequence's block table
    unsigned group;         // query heads per KV head
    unsigned ctx;           // the sequence's tokens, the new one included
    unsigned active;        // partitions the context reaches
    unsigned t_begin;       // the partition's first token
    unsigned n;             // its tokens; 0 beyond the context (such a block is not counted)
    unsigned row;           // the sequence's query row in the pass
};

// This block's partition; with CLUSTER, the leader's barrier initialised for the active
// partitions first. Unfused (no rotation: an earlier kernel of this pass stored the newest key
// and value), it waits for the previous kernel before anything else.
template <bool CLUSTER>
__device__ __forceinline__ DecodePartition decode_partition(const qrt_attn_args& args,
                                                           uint64_t* leader_bar) {
    if (args.inv_freq == 0) qrt::pdl_wait();
    const qrt_attn_seq seq = reinterpret_cast<const qrt_attn_seq*>(args.seqs)[blockIdx.x];
    DecodePartition p;
    p.table = reinterpret_cast<const uint32_t*>(args.block_tables) + seq.table;
    p.group = args.num_heads / args.num_kv_heads;
    p.ctx = seq.past + seq.len;
    p.active = (p.ctx + args.partition - 1) / args.partition;
    if (CLUSTER) cluster_merge::init(leader_bar, blockIdx.z, p.active);
    p.t_begin = blockIdx.z * args.partition;
    p.n = p.t_begin < p.ctx ? min(args.partition, p.ctx - p.t_begin) : 0;
    p.row = seq.start + seq.len - 1;
    return p;
}

// A partition beyond its sequence's context (`p.n` 0) scores nothing. Deferred (`args.out` 0,
// no cluster), it still writes its maxima, as -inf, so that the merging projection gives it no
// weight; after the wait, since the previous layer's projection may still be reading the work
// area until then.
template <bool CLUSTER>
__device__ __forceinline__ void skip_partition(const qrt_attn_args& args,
                                               const DecodePartition& p) {
    if (CLUSTER || args.out != 0) return;
    if (args.inv_freq != 0) qrt::pdl_wait();
    const Partials parts(args, args.head_dim);
    const size_t base =
        (static_cast<size_t>(p.row) * args.num_heads + blockIdx.y * p.group) * args.splits +
        blockIdx.z;
    for (unsigned g = threadIdx.x; g < p.group; g += blockDim.x)
        parts.max[base + g * args.splits] = -INFINITY;
}

// What the warps of a decode block found for their tokens, per query head of the group: the
// unnormalised output, the maximum score (natural-log units) and the sum of the exponentials.
template <int WARPS, int G, int D>
struct WarpResults {
    float acc[WARPS][G][D];
    float max[WARPS][G];
    float sum[WARPS][G];
};

// How the last partition of a (sequence, KV head) merges them in global memory (finish_partition).
enum class Merge {
    kSerial,    // merge_partitions (the tensor-core kernel of whole partitions)
    kWide,      // merge_partitions_wide inline (the ring kernel)
    kWideCall,  // merge_partitions_wide out of line (the register kernel)
};

// The end of a decode block (every kernel): its warps' results combined into the partition's
// output, final when it is the only one; otherwise written to the cluster's leader (CLUSTER) or
// to `args.work`, and merged there with the other partitions as MERGE says. DEFERRABLE (the
// tensor-core kernels) and `args.out` 0: every partition written to `args.work` by query row,
// none merged here.
template <int D, int G, int WARPS, bool CLUSTER, bool DEFERRABLE, Merge MERGE = Merge::kSerial>
__device__ __forceinline__ void finish_partition(const qrt_attn_args& args, unsigned active,
                                                 unsigned row,
                                                 WarpResults<WARPS, G, D>& warps,
                                                 float* slots, uint64_t* leader_bar) {
    const unsigned s_idx = blockIdx.x;
    const unsigned kvh = blockIdx.y;
    const unsigned split = blockIdx.z;
    const unsigned group = args.num_heads / args.num_kv_heads;
    const unsigned tid = threadIdx.x;
    // Deferred: every partition, even a sequence's only one, left for the output projection.
    const bool deferred = DEFERRABLE && !CLUSTER && args.out == 0;
    // The warps combined: the partition's output (final when it is the only one).
    const Partials parts(args, D);
    const size_t base =
        (static_cast<size_t>(deferred ? row : s_idx) * args.num_heads + kvh * group) * args.splits;
    const unsigned width = group * D;  // one partition's outputs
    float* slot = nullptr;             // CLUSTER: this partition's slot in the leader
    if (CLUSTER && active > 1) {
        cluster_merge::wait_started();
        slot = cluster_merge::leader_slots(slots) + split * width;
    }
    for (unsigned i = tid; i < width; i += blockDim.x) {
        const unsigned g = i / D;
        const unsigned d = i % D;
        float m = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) m = fmaxf(m, warps.max[w][g]);
        float out = 0.f;
        float l = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float f = warps.max[w][g] == -INFINITY ? 0.f : expf(warps.max[w][g] - m);
            out = fmaf(warps.acc[w][g][d], f, out);
            l = fmaf(warps.sum[w][g], f, l);
        }
        if (active == 1 && !deferred) {
            reinterpret_cast<float*>(args.out)[static_cast<size_t>(row) * args.num_heads * D +
                                               (kvh * group + g) * D + d] = out / l;
            continue;
        }
        if (CLUSTER) {
            slot[i] = out;
            if (d == 0) {
                // After all partitions' outputs: the maxima, then the sums.
                float* stats = slot - split * width + args.splits * width;
                stats[split * group + g] = m;
                stats[(args.splits + split) * group + g] = l;
            }
            continue;
        }
        const size_t at = base + g * args.splits + split;
        parts.acc[at * D + d] = out;
        if (d == 0) {
            parts.max[at] = m;
            parts.sum[at] = l;
        }
    }
    if (active == 1 || deferred) return;
    if (!CLUSTER) {
        static_assert(sizeof(warps.acc) >= sizeof(float) * kMaxGroup * kCachedWeights,
                      "the merge's weights fit the warps' results");
        float* scratch = &warps.acc[0][0][0];
        if constexpr (MERGE == Merge::kSerial)
            merge_partitions<D>(args, parts, base, active, group, row);
        else if constexpr (MERGE == Merge::kWide)
            merge_partitions_wide<D>(args, parts, base, active, group, row, scratch);
        else
            merge_partitions_wide_call<D>(args, parts, base, active, group, row, scratch);
        return;
    }
    if (split != 0) {
        cluster_merge::arrive_at_leader(leader_bar);
        return;
    }
    // The leader: every partition's result in its own shared memory, combined in order.
    __syncthreads();  // its own partition's stores
    cluster_merge::wait_for_partitions(leader_bar);
    const float* pmax = slots + args.splits * width;
    const float* psum = pmax + args.splits * group;
    float* out = reinterpret_cast<float*>(args.out) +
                 static_cast<size_t>(row) * args.num_heads * D + kvh * width;
    for (unsigned i = tid; i < width; i += blockDim.x) {
        const unsigned g = i / D;
        float m = -INFINITY;
        for (unsigned r = 0; r < active; ++r) m = fmaxf(m, pmax[r * group + g]);
        float acc_i = 0.f;
        float l = 0.f;
#pragma unroll 4
        for (unsigned r = 0; r < active; ++r) {
            const float f = expf(pmax[r * group + g] - m);
            acc_i = fmaf(slots[r * width + i], f, acc_i);
            l = fmaf(psum[r * group + g], f, l);
        }
        out[i] = acc_i / l;
    }
}

// One block per (sequence, KV head, partition of at most kMaxPartition tokens), for groups of at
// most G query heads per KV head. Every lane loads its keys and values for the whole partition
// with 16-byte loads at once (before waiting for the previous kernel when the rotation is fused:
// the cache holds the older tokens already, and the rotation's angles come from the pass
// inputs), then the queries and the newest key and value together, scores its 8 dimensions
// against each query head, sums them over the token's lanes, and keeps the token's
// probabilities and weighted values in registers; warps are combined in shared memory. A
// single-partition context is written out directly; otherwise the partition's unnormalised
// output, maximum and sum go to the cluster's leader (CLUSTER, cluster_merge) or to
// `args.work` for merge_partitions.
template <int D, int G, bool CLUSTER>
__device__ __forceinline__ void attn_decode(const qrt_attn_args& args) {
    using S = DecodeShape<D>;
    __shared__ __align__(16) WarpResults<S::kWarps, G, D> warps;
    // CLUSTER: the leader's barrier and slots (`splits * group * (D + 2)` floats).
    __shared__ __align__(8) uint64_t leader_bar;
    extern __shared__ __align__(16) float slots[];

    const bool fused = args.inv_freq != 0;
    const unsigned kvh = blockIdx.y;
    const auto [table, group, ctx, active, t_begin, n, row] =
        decode_partition<CLUSTER>(args, &leader_bar);
    if (n == 0) return;
    const unsigned tid = threadIdx.x;
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    const unsigned d0 = (lane % S::kLanes) * 8;  // this lane's 8 dimensions
    const unsigned sub = lane / S::kLanes;       // this lane's token within a step
    const bool high = d0 >= D / 2;
    __half* kc = reinterpret_cast<__half*>(args.k_cache);
    __half* vc = reinterpret_cast<__half*>(args.v_cache);

    uint4 kr[S::kSteps];
    uint4 vr[S::kSteps];
    size_t off[S::kSteps];
    int newest = -1;  // (fused) the step holding this lane's part of the newest token
#pragma unroll
    for (int s = 0; s < S::kSteps; ++s) {
        const unsigned tok = (warp * S::kSteps + s) * S::kPerStep + sub;
        const unsigned t = t_begin + min(tok, n - 1);
        off[s] = (static_cast<size_t>(slot_of(table, t, args.block_size)) * args.num_kv_heads + kvh) *
                     D + d0;
        if (t_begin + tok == ctx - 1) newest = s;
        kr[s] = vr[s] = make_uint4(0, 0, 0, 0);
        qrt::load_cg_if(kr[s], kc + off[s], tok < n);
        qrt::load_cg_if(vr[s], vc + off[s], tok < n);
    }

    // The rotation's angles for this lane's dimensions (fused): from the pass inputs, so before
    // the wait. Each lane computes the angles of frequencies `lane` and `lane + 32` (D = 128
    // only); the ones of its dimensions come by shuffles.
    float sn[8], cs[8];
    if (fused) {
        const float* inv_freq = reinterpret_cast<const float*>(args.inv_freq);
        const float pos = static_cast<float>(ctx - 1);  // the query's position
        float sn_lo, cs_lo, sn_hi = 0.f, cs_hi = 0.f;
        sincosf(pos * inv_freq[lane % (D / 2)], &sn_lo, &cs_lo);
        if (D / 2 > qrt::kWarp) sincosf(pos * inv_freq[lane + qrt::kWarp], &sn_hi, &cs_hi);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned j = (d0 + i) % (D / 2);
            sn[i] = __shfl_sync(qrt::kFull, sn_lo, j % qrt::kWarp);
            cs[i] = __shfl_sync(qrt::kFull, cs_lo, j % qrt::kWarp);
            if (D / 2 > qrt::kWarp) {
                const float sh = __shfl_sync(qrt::kFull, sn_hi, j % qrt::kWarp);
                const float ch = __shfl_sync(qrt::kFull, cs_hi, j % qrt::kWarp);
                if (j >= qrt::kWarp) sn[i] = sh, cs[i] = ch;
            }
        }
    }
    if (fused) qrt::pdl_wait();
    qrt::pdl_launch_dependents();

    // What the previous kernel wrote, all requested before any is used: the newest key and
    // value (fused, the lanes holding that token) and the group's queries.
    float nk[8] = {}, nv[8] = {};
    if (fused && newest >= 0) {
        const size_t nrow = (static_cast<size_t>(row) * args.num_kv_heads + kvh) * D + d0;
        load8_cg(reinterpret_cast<const float*>(args.k_new) + nrow, nk);
        load8_cg(reinterpret_cast<const float*>(args.v_new) + nrow, nv);
    }
    const float* q = reinterpret_cast<const float*>(args.q) +
                     static_cast<size_t>(row) * args.num_heads * D + kvh * group * D;
    float qr[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int i = 0; i < 8; ++i) qr[g][i] = 0.f;
        if (g < group) load8_cg(q + g * D + d0, qr[g]);
    }
    // The queries rotated (fused; the partner dimensions are held by the lane kLanes / 2 away
    // within the same token) and scaled.
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (fused) rotate_in_warp<D>(qr[g], sn, cs, high);
#pragma unroll
        for (int i = 0; i < 8; ++i) qr[g][i] *= args.scale;
    }
    // The newest token (fused): rotate its key, store key and value in the cache, keep both.
    if (fused) rotate_in_warp<D>(nk, sn, cs, high);
    if (fused && newest >= 0) {
        const uint4 k16 = pack8(nk);
        const uint4 v16 = pack8(nv);
#pragma unroll
        for (int s = 0; s < S::kSteps; ++s) {
            if (s != newest) continue;
            kr[s] = k16;
            vr[s] = v16;
            *reinterpret_cast<uint4*>(kc + off[s]) = k16;
            *reinterpret_cast<uint4*>(vc + off[s]) = v16;
        }
    }

    // Scores of this lane's tokens, summed over each token's lanes (masked beyond the context).
    float p[S::kSteps][G];
#pragma unroll
    for (int s = 0; s < S::kSteps; ++s) {
        const unsigned tok = (warp * S::kSteps + s) * S::kPerStep + sub;
        float kf[8];
        unpack8(kr[s], kf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) dot = fmaf(qr[g][i], kf[i], dot);
#pragma unroll
            for (int o = 1; o < S::kLanes; o *= 2) dot += __shfl_xor_sync(qrt::kFull, dot, o);
            p[s][g] = tok < n ? dot : -INFINITY;
        }
    }
    // The warp's maximum and sum per head (over its tokens: lanes kLanes apart), then its
    // weighted values.
    float mx[G], sum[G];
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float m = p[0][g];
#pragma unroll
        for (int s = 1; s < S::kSteps; ++s) m = fmaxf(m, p[s][g]);
#pragma unroll
        for (int o = S::kLanes; o < qrt::kWarp; o *= 2) m = fmaxf(m, __shfl_xor_sync(qrt::kFull, m, o));
        float l = 0.f;
#pragma unroll
        for (int s = 0; s < S::kSteps; ++s) {
            p[s][g] = m == -INFINITY ? 0.f : expf(p[s][g] - m);
            l += p[s][g];
        }
#pragma unroll
        for (int o = S::kLanes; o < qrt::kWarp; o *= 2) l += __shfl_xor_sync(qrt::kFull, l, o);
        mx[g] = m;
        sum[g] = l;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
    }
#pragma unroll
    for (int s = 0; s < S::kSteps; ++s) {
        float vf[8];
        unpack8(vr[s], vf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p[s][g], vf[i], acc[g][i]);
        }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g >= group) break;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int o = S::kLanes; o < qrt::kWarp; o *= 2)
                acc[g][i] += __shfl_xor_sync(qrt::kFull, acc[g][i], o);
        }
        if (sub == 0) {
            float4* dst = reinterpret_cast<float4*>(&warps.acc[warp][g][d0]);
            dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
        if (lane == 0) {
            warps.max[warp][g] = mx[g];
            warps.sum[warp][g] = sum[g];
        }
    }
    __syncthreads();

    finish_partition<D, G, S::kWarps, CLUSTER, false, Merge::kWideCall>(args, active, row, warps,
                                                                        slots, &leader_bar);
}

// Decode on tensor cores (`qrt_attn_decode_tc_d<D>_g<G>`): the same grid and merge as
// attn_decode, for partitions of any multiple of kWarps * kKeys tokens. A partition of up to
// kMaxStaged tokens is staged whole: every key and value requested at once with cp.async into
// shared memory (before waiting for the previous kernel when the rotation is fused), so a block
// keeps a whole partition in flight without holding it in registers, and each warp walks its
// quarter of it. A longer one (long contexts, few partitions) passes through a ring of stages
// (`RingShape`), the next stages' copies in flight while one is scored, each warp taking kKeys
// tokens of a stage. A warp scores kKeys keys at a time with mma.sync, the group's query heads
// as rows 0 .. group - 1 of the A fragment (rows 8-15 zero; those between computed and never
// stored), an online softmax in base 2 per head, and P V from transposed ldmatrix reads, as in
// prefill. Fewer instructions per token than attn_decode's shuffle reductions, and longer
// partitions: at batch 8 the grid is a block per multiprocessor or two, and a long context
// needs few partitions.
template <int D>
struct DecodeTcShape {
    static constexpr int kWarps = 4;
    static constexpr int kThreads = kWarps * qrt::kWarp;
    static constexpr int kKeys = 16;          // keys per mma step
    static constexpr int kStride = D + 8;     // halves per staged key or value row
    static constexpr int kDimSteps = D / 16;  // k-steps of Q K^T
    static constexpr int kDimBlocks = D / 8;  // 8-dimension column blocks of the output
    // Most tokens staged at once (`max_tc_partition` in launch/attention.rs): 72 KB of keys
    // and values.
    static constexpr unsigned kMaxStaged = D <= 64 ? 256 : 128;
};

// Thread tid of a tensor-core decode block rotates dimension pairs (j, j + D/2),
// j = tid % (D/2), of one head at a time (the block's threads are a multiple of D/2): the sine
// and cosine of its angle at the query's position `pos`, from the pass inputs (so before the
// wait); no rotation unless fused.
template <int D>
__device__ __forceinline__ void decode_tc_angle(const qrt_attn_args& args, bool fused,
                                                unsigned ctx, unsigned j, float& sn, float& cs) {
    sn = 0.f, cs = 1.f;
    if (fused) {
        const float pos = static_cast<float>(ctx - 1);  // the query's position
        sincosf(pos * reinterpret_cast<const float*>(args.inv_freq)[j], &sn, &cs);
    }
}

// The group's queries of query row `row` for KV head `kvh`, rotated (fused) and scaled by
// scale * log2(e), as f16 into `qs`.
template <int D, int G, int THREADS = DecodeTcShape<D>::kThreads>
__device__ __forceinline__ void decode_tc_queries(const qrt_attn_args& args, unsigned row,
                                                  unsigned kvh, unsigned group, unsigned j,
                                                  float sn, float cs, __half (&qs)[G][D]) {
    const float* q = reinterpret_cast<const float*>(args.q) +
                     static_cast<size_t>(row) * args.num_heads * D + kvh * group * D;
    const float qscale = args.scale * 1.4426950408889634f;
    for (unsigned p = threadIdx.x; p < group * (D / 2); p += THREADS) {
        const unsigned g = p / (D / 2);
        const float x0 = __ldcg(q + g * D + j);
        const float x1 = __ldcg(q + g * D + j + D / 2);
        qs[g][j] = __float2half_rn((x0 * cs - x1 * sn) * qscale);
        qs[g][j + D / 2] = __float2half_rn((x1 * cs + x0 * sn) * qscale);
    }
}

// The newest key of query row `row` for KV head `kvh` (rotated) and its value, at dimensions j
// and j + D/2, stored into their slot of the caches `kc` and `vc` (the context's last token)
// and returned in `kv` (key, key, value, value).
template <int D>
__device__ __forceinline__ void decode_tc_newest(const qrt_attn_args& args, const uint32_t* table,
                                                 unsigned ctx, unsigned row, unsigned kvh,
                                                 unsigned j, float sn, float cs, __half* kc,
                                                 __half* vc, __half (&kv)[4]) {
    const size_t nrow = (static_cast<size_t>(row) * args.num_kv_heads + kvh) * D;
    const float* kn = reinterpret_cast<const float*>(args.k_new) + nrow;
    const float* vn = reinterpret_cast<const float*>(args.v_new) + nrow;
    const float k0 = __ldcg(kn + j), k1 = __ldcg(kn + j + D / 2);
    kv[0] = __float2half_rn(k0 * cs - k1 * sn);
    kv[1] = __float2half_rn(k1 * cs + k0 * sn);
    kv[2] = __float2half_rn(__ldcg(vn + j));
    kv[3] = __float2half_rn(__ldcg(vn + j + D / 2));
    const size_t off =
        (static_cast<size_t>(slot_of(table, ctx - 1, args.block_size)) * args.num_kv_heads +
         kvh) * D;
    kc[off + j] = kv[0];
    kc[off + j + D / 2] = kv[1];
    vc[off + j] = kv[2];
    vc[off + j + D / 2] = kv[3];
}

// `kv` (decode_tc_newest) into staged row `at` of the keys `ks` and values `vs`.
template <int D>
__device__ __forceinline__ void decode_tc_stage_newest(__half* ks, __half* vs, unsigned at,
                                                       unsigned j, const __half (&kv)[4]) {
    __half* kn_s = ks + at * DecodeTcShape<D>::kStride;
    __half* vn_s = vs + at * DecodeTcShape<D>::kStride;
    kn_s[j] = kv[0];
    kn_s[j + D / 2] = kv[1];
    vn_s[j] = kv[2];
    vn_s[j + D / 2] = kv[3];
}

// The A fragment of the queries for a lane of fragment row gr (head gr of the group, zero
// beyond it; rows gr + 8 are zero) and column pair tc.
template <int D, int G>
__device__ __forceinline__ void decode_tc_query_fragment(const __half (&qs)[G][D],
                                                         unsigned group, unsigned gr, unsigned tc,
                                                         uint32_t (&qa)[D / 16][2]) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int c = 0; c < 2; ++c)
            qa[kk][c] = gr < group
                            ? *reinterpret_cast<const uint32_t*>(&qs[gr][kk * 16 + c * 8 + 2 * tc])
                            : 0u;
    }
}

// A warp's output `o`, maximum `m` (base 2) and sum `l` (this lane's share) per head into
// `warps`, for finish_partition.
template <int D, int G, int WARPS>
__device__ __forceinline__ void decode_tc_warp_result(WarpResults<WARPS, G, D>& warps,
                                                      unsigned group,
                                                      const float (&o)[D / 8][2], float m,
                                                      float l) {
    const unsigned warp = threadIdx.x / qrt::kWarp;
    const unsigned lane = threadIdx.x % qrt::kWarp;
    const unsigned gr = lane / 4;
    const unsigned tc = lane % 4;
    l += __shfl_xor_sync(qrt::kFull, l, 1);
    l += __shfl_xor_sync(qrt::kFull, l, 2);
    if (gr < group) {
#pragma unroll
        for (int b = 0; b < D / 8; ++b)
            *reinterpret_cast<float2*>(&warps.acc[warp][gr][b * 8 + 2 * tc]) =
                make_float2(o[b][0], o[b][1]);
        if (tc == 0) {
            warps.max[warp][gr] = m * 0.6931471805599453f;
            warps.sum[warp][gr] = l;
        }
    }
}

template <int D, int G, bool CLUSTER>
__device__ __forceinline__ void attn_decode_tc(const qrt_attn_args& args) {
    using S = DecodeTcShape<D>;
    __shared__ __align__(16) WarpResults<S::kWarps, G, D> warps;
    __shared__ __align__(16) __half qs[G][D];  // the group's queries, rotated and scaled
    __shared__ __align__(8) uint64_t leader_bar;
    // The partition's keys, then its values (`partition` rows of kStride halves each), then
    // (CLUSTER) the leader's slots.
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    __half* ks = reinterpret_cast<__half*>(dyn_smem);
    __half* vs = ks + args.partition * S::kStride;
    float* slots = reinterpret_cast<float*>(vs + args.partition * S::kStride);

    const bool fused = args.inv_freq != 0;
    const unsigned kvh = blockIdx.y;
    const DecodePartition part = decode_partition<CLUSTER>(args, &leader_bar);
    if (part.n == 0) return skip_partition<CLUSTER>(args, part);
    const auto [table, group, ctx, active, t_begin, n, row] = part;
    const unsigned newest = ctx - 1 - t_begin;  // in this partition when < n
    const bool has_newest = fused && newest < n;
    const unsigned tid = threadIdx.x;
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    __half* kc = reinterpret_cast<__half*>(args.k_cache);
    __half* vc = reinterpret_cast<__half*>(args.v_cache);

    // Keys and values into shared memory, zeros beyond the context; fused, the newest token is
    // not in the cache yet (it is stored below).
    const uint32_t kb = static_cast<uint32_t>(__cvta_generic_to_shared(ks));
    const uint32_t vb = static_cast<uint32_t>(__cvta_generic_to_shared(vs));
#pragma unroll 4
    for (unsigned e = tid; e < args.partition * (D / 8); e += S::kThreads) {
        const unsigned j = e / (D / 8);
        const unsigned c = (e % (D / 8)) * 8;
        if (has_newest && j == newest) continue;
        const bool in = j < n;
        const size_t off = (static_cast<size_t>(slot_of(table, t_begin + (in ? j : 0),
                                                        args.block_size)) *
                                args.num_kv_heads + kvh) * D + c;
        const uint32_t dst = (j * S::kStride + c) * 2;
        qrt::cp_async16(kb + dst, kc + off, in);
        qrt::cp_async16(vb + dst, vc + off, in);
    }
    qrt::cp_async_commit();

    // Thread tid rotates dimension pairs (j, j + D/2), j = tid % (D/2), of one head at a time
    // (the block's threads are a multiple of D/2): its angle from the pass inputs, before the
    // wait.
    const unsigned j = tid % (D / 2);
    float sn, cs;
    decode_tc_angle<D>(args, fused, ctx, j, sn, cs);
    if (fused) qrt::pdl_wait();
    qrt::pdl_launch_dependents();

    decode_tc_queries<D, G>(args, row, kvh, group, j, sn, cs, qs);
    // The newest key (rotated) and value: into the cache and into the staged partition.
    if (has_newest && tid < D / 2) {
        const size_t nrow = (static_cast<size_t>(row) * args.num_kv_heads + kvh) * D;
        const float* kn = reinterpret_cast<const float*>(args.k_new) + nrow;
        const float* vn = reinterpret_cast<const float*>(args.v_new) + nrow;
        const float k0 = __ldcg(kn + j), k1 = __ldcg(kn + j + D / 2);
        const __half kr0 = __float2half_rn(k0 * cs - k1 * sn);
        const __half kr1 = __float2half_rn(k1 * cs + k0 * sn);
        const __half v0 = __float2half_rn(__ldcg(vn + j));
        const __half v1 = __float2half_rn(__ldcg(vn + j + D / 2));
        const size_t off =
            (static_cast<size_t>(slot_of(table, ctx - 1, args.block_size)) * args.num_kv_heads +
             kvh) * D;
        kc[off + j] = kr0;
        kc[off + j + D / 2] = kr1;
        vc[off + j] = v0;
        vc[off + j + D / 2] = v1;
        __half* kn_s = ks + newest * S::kStride;
        __half* vn_s = vs + newest * S::kStride;
        kn_s[j] = kr0;
        kn_s[j + D / 2] = kr1;
        vn_s[j] = v0;
        vn_s[j + D / 2] = v1;
    }
    qrt::cp_async_wait<0>();
    __syncthreads();

    // This warp's keys [k0, k1) of the partition; the A fragment of the queries (fragment
    // row gr: head gr of the group, zero beyond it; rows gr + 8 are zero).
    const unsigned gr = lane / 4;
    const unsigned tc = lane % 4;
    const unsigned chunk = args.partition / S::kWarps;
    const unsigned k0 = warp * chunk;
    const unsigned k1 = min(k0 + chunk, n);
    uint32_t qa[S::kDimSteps][2];
    decode_tc_query_fragment<D, G>(qs, group, gr, tc, qa);
    float o[S::kDimBlocks][2];
#pragma unroll
    for (int b = 0; b < S::kDimBlocks; ++b) o[b][0] = o[b][1] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (unsigned t0 = k0; t0 < k1; t0 += S::kKeys) {
        // Scores of keys t0 .. t0 + 15 (two 8-key blocks), B fragments by ldmatrix: matrix i
        // of a load holds the block's keys at dimensions kk * 16 + 8 i .. + 7.
        float sc[2][4];
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) {
            sc[nb][0] = sc[nb][1] = sc[nb][2] = sc[nb][3] = 0.f;
            const unsigned key = t0 + nb * 8 + (lane & 7);
#pragma unroll
            for (int kk = 0; kk < S::kDimSteps; kk += 2) {
                uint32_t r[4];
                qrt::ldmatrix_x4(r, kb + (key * S::kStride + kk * 16 + (lane >> 3) * 8) * 2);
                qrt::mma16816<__half>(sc[nb], qa[kk][0], 0u, qa[kk][1], 0u, r[0], r[1]);
                qrt::mma16816<__half>(sc[nb], qa[kk + 1][0], 0u, qa[kk + 1][1], 0u, r[2], r[3]);
            }
        }
        // Masked beyond the partition's tokens; the running maximum and sum of this lane's head
        // (its row's 4 lanes agree after the shuffles).
        float mx = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                float& x = sc[nb][i];
                x = t0 + nb * 8 + 2 * tc + i < k1 ? x : -INFINITY;
                mx = fmaxf(mx, x);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 2));
        const float m_new = fmaxf(m, mx);
        const float corr = exp2f(m - m_new);  // m_new is finite: t0 < k1
        m = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                sc[nb][i] = exp2f(sc[nb][i] - m);
                sum += sc[nb][i];
            }
        }
        l = l * corr + sum;
#pragma unroll
        for (int b = 0; b < S::kDimBlocks; ++b) o[b][0] *= corr, o[b][1] *= corr;
        // O += P V (P's rows 8-15 are zero; rows from the group's size to 7 are never stored).
        const uint32_t a0 = half2_bits(sc[0][0], sc[0][1]);
        const uint32_t a2 = half2_bits(sc[1][0], sc[1][1]);
        const unsigned key = t0 + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
        for (int db = 0; db < S::kDimBlocks / 2; ++db) {
            const unsigned dim = (2 * db + (lane >> 4)) * 8;
            uint32_t r[4];
            qrt::ldmatrix_x4_trans(r, vb + (key * S::kStride + dim) * 2);
            float d0[4] = {o[2 * db][0], o[2 * db][1], 0.f, 0.f};
            float d1[4] = {o[2 * db + 1][0], o[2 * db + 1][1], 0.f, 0.f};
            qrt::mma16816<__half>(d0, a0, 0u, a2, 0u, r[0], r[1]);
            qrt::mma16816<__half>(d1, a0, 0u, a2, 0u, r[2], r[3]);
            o[2 * db][0] = d0[0], o[2 * db][1] = d0[1];
            o[2 * db + 1][0] = d1[0], o[2 * db + 1][1] = d1[1];
        }
    }
    decode_tc_warp_result<D, G, S::kWarps>(warps, group, o, m, l);
    __syncthreads();
    finish_partition<D, G, S::kWarps, CLUSTER, true>(args, active, row, warps, slots,
                                                     &leader_bar);
}

// A warp's running softmax state over the keys it has scored: per head of its fragment row,
// the maximum (base 2), the sum, and the unnormalised output columns it holds.
template <int D>
struct DecodeTcState {
    float o[DecodeTcShape<D>::kDimBlocks][2];
    float m = -INFINITY, l = 0.f;
    __device__ DecodeTcState() {
#pragma unroll
        for (int b = 0; b < DecodeTcShape<D>::kDimBlocks; ++b) o[b][0] = o[b][1] = 0.f;
    }
};

// One step of a ring kernel's warp (attn_decode_tc's loop body, written apart): the kKeys keys
// and values staged from row `row` of `kb` / `vb` (shared addresses), partition tokens t0..,
// masked from token k1 (t0 < k1), scored against the query fragment `qa` into `st`. B
// fragments by ldmatrix: matrix i of a load holds the block's keys at dimensions kk * 16 + 8 i
// .. + 7.
template <int D>
__device__ __forceinline__ void decode_tc_step(uint32_t kb, uint32_t vb, unsigned row,
                                               unsigned t0, unsigned k1,
                                               const uint32_t (&qa)[D / 16][2],
                                               DecodeTcState<D>& st) {
    using S = DecodeTcShape<D>;
    const unsigned lane = threadIdx.x % qrt::kWarp;
    const unsigned tc = lane % 4;
    float sc[2][4];
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
        sc[nb][0] = sc[nb][1] = sc[nb][2] = sc[nb][3] = 0.f;
        const unsigned key = row + nb * 8 + (lane & 7);
#pragma unroll
        for (int kk = 0; kk < S::kDimSteps; kk += 2) {
            uint32_t r[4];
            qrt::ldmatrix_x4(r, kb + (key * S::kStride + kk * 16 + (lane >> 3) * 8) * 2);
            qrt::mma16816<__half>(sc[nb], qa[kk][0], 0u, qa[kk][1], 0u, r[0], r[1]);
            qrt::mma16816<__half>(sc[nb], qa[kk + 1][0], 0u, qa[kk + 1][1], 0u, r[2], r[3]);
        }
    }
    // Masked beyond the warp's tokens; the running maximum and sum of this lane's head (its
    // row's 4 lanes agree after the shuffles).
    float mx = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float& x = sc[nb][i];
            x = t0 + nb * 8 + 2 * tc + i < k1 ? x : -INFINITY;
            mx = fmaxf(mx, x);
        }
    }
    mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(qrt::kFull, mx, 2));
    const float m_new = fmaxf(st.m, mx);
    const float corr = exp2f(st.m - m_new);  // m_new is finite: t0 < k1
    st.m = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            sc[nb][i] = exp2f(sc[nb][i] - st.m);
            sum += sc[nb][i];
        }
    }
    st.l = st.l * corr + sum;
#pragma unroll
    for (int b = 0; b < S::kDimBlocks; ++b) st.o[b][0] *= corr, st.o[b][1] *= corr;
    // O += P V (P's rows 8-15 are zero; rows from the group's size to 7 are never stored).
    const uint32_t a0 = half2_bits(sc[0][0], sc[0][1]);
    const uint32_t a2 = half2_bits(sc[1][0], sc[1][1]);
    const unsigned key = row + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
    for (int db = 0; db < S::kDimBlocks / 2; ++db) {
        const unsigned dim = (2 * db + (lane >> 4)) * 8;
        uint32_t r[4];
        qrt::ldmatrix_x4_trans(r, vb + (key * S::kStride + dim) * 2);
        float d0[4] = {st.o[2 * db][0], st.o[2 * db][1], 0.f, 0.f};
        float d1[4] = {st.o[2 * db + 1][0], st.o[2 * db + 1][1], 0.f, 0.f};
        qrt::mma16816<__half>(d0, a0, 0u, a2, 0u, r[0], r[1]);
        qrt::mma16816<__half>(d1, a0, 0u, a2, 0u, r[2], r[3]);
        st.o[2 * db][0] = d0[0], st.o[2 * db][1] = d0[1];
        st.o[2 * db + 1][0] = d1[0], st.o[2 * db + 1][1] = d1[1];
    }
}

// Waits until at most `pending` (0 to 3) committed groups of copies are still in flight.
__device__ __forceinline__ void cp_async_wait_at_most(unsigned pending) {
    if (pending >= 3)
        qrt::cp_async_wait<3>();
    else if (pending == 2)
        qrt::cp_async_wait<2>();
    else if (pending == 1)
        qrt::cp_async_wait<1>();
    else
        qrt::cp_async_wait<0>();
}

// The ring kernel's geometry: a stage is a step of kKeys keys for each warp, the ring as many
// stages as fit the kMaxStaged rows the whole-partition kernel stages. Heads of 64 take 8
// warps, a ring of two 128-token stages (`ring_decode_threads` in launch/attention.rs: keep the
// two in step): the kernel waits on its few warps' latency, and with 4 warps and four 64-token
// stages decode steps were 2-5% slower (RESULTS log 56); heads of 128 keep 4 warps, two
// 64-token stages.
template <int D>
struct RingShape {
    static constexpr int kWarps = D <= 64 ? 8 : 4;
    static constexpr int kThreads = kWarps * qrt::kWarp;
    static constexpr int kKeys = DecodeTcShape<D>::kKeys;
    static constexpr int kStride = DecodeTcShape<D>::kStride;
    static constexpr unsigned kMaxStaged = DecodeTcShape<D>::kMaxStaged;
    static constexpr unsigned kRingKeys = kWarps * kKeys;
    static constexpr unsigned kRing = kMaxStaged / kRingKeys;
    // 16-byte copies a thread issues per ring stage, for its keys and again for its values.
    static constexpr unsigned kRingCopies = kRingKeys * (D / 8) / kThreads;
};

// attn_decode_tc for partitions longer than kMaxStaged, through the ring, merged in global
// memory only (the launcher never clusters ring partitions). A kernel of its own:
// one kernel for both (and the whole-partition kernel written around decode_tc_step) measured
// 0.6-0.8% slower at batches 4 and 8 of 512 tokens (RESULTS log 52), so attn_decode_tc keeps
// its own loop and its SASS stays as it was measured.
template <int D, int G>
__device__ __forceinline__ void attn_decode_tc_ring(const qrt_attn_args& args) {
    using S = RingShape<D>;
    static_assert(S::kRing >= 2 && S::kRing <= 4, "cp_async_wait_at_most covers the ring");
    __shared__ __align__(16) WarpResults<S::kWarps, G, D> warps;
    __shared__ __align__(16) __half qs[G][D];  // the group's queries, rotated and scaled
    // The ring's keys, then its values (kMaxStaged rows of kStride halves each).
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    __half* ks = reinterpret_cast<__half*>(dyn_smem);
    __half* vs = ks + S::kMaxStaged * S::kStride;

    const bool fused = args.inv_freq != 0;
    const unsigned kvh = blockIdx.y;
    const DecodePartition part = decode_partition<false>(args, nullptr);
    if (part.n == 0) return skip_partition<false>(args, part);
    const auto [table, group, ctx, active, t_begin, n, row] = part;
    const unsigned newest = ctx - 1 - t_begin;  // in this partition when < n
    const bool has_newest = fused && newest < n;
    const unsigned tid = threadIdx.x;
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
    __half* kc = reinterpret_cast<__half*>(args.k_cache);
    __half* vc = reinterpret_cast<__half*>(args.v_cache);

    // Key and value 16-byte piece c of partition token j, at cache slot `slot`, into staged
    // row `at`, zeros beyond the context; fused, the newest token is not in the cache yet (it
    // is stored below).
    const uint32_t kb = static_cast<uint32_t>(__cvta_generic_to_shared(ks));
    const uint32_t vb = static_cast<uint32_t>(__cvta_generic_to_shared(vs));
    auto slot_at = [&](unsigned j) {
        return slot_of(part.table, part.t_begin + (j < part.n ? j : 0), args.block_size);
    };
    auto request = [&](unsigned j, unsigned c, unsigned at, size_t slot) {
        if (has_newest && j == newest) return;
        const size_t off = (slot * args.num_kv_heads + kvh) * D + c;
        const uint32_t dst = (at * S::kStride + c) * 2;
        qrt::cp_async16(kb + dst, kc + off, j < part.n);
        qrt::cp_async16(vb + dst, vc + off, j < part.n);
    };
    // Ring stage r (tokens r * kRingKeys..) into its place r % kRing: a thread's tokens, the
    // cache slots of which `into` / `cached` hold (read from the block table ahead, so that no
    // copy waits on the table).
    const unsigned stages = (n + S::kRingKeys - 1) / S::kRingKeys;
    auto stage_token = [&](unsigned r, unsigned i) {
        return r * S::kRingKeys + (tid + i * S::kThreads) / (D / 8);
    };
    auto stage_slots = [&](unsigned r, uint32_t(&into)[S::kRingCopies]) {
#pragma unroll
        for (unsigned i = 0; i < S::kRingCopies; ++i) into[i] = slot_at(stage_token(r, i));
    };
    auto request_stage = [&](unsigned r, const uint32_t(&cached)[S::kRingCopies]) {
#pragma unroll
        for (unsigned i = 0; i < S::kRingCopies; ++i) {
            const unsigned j = stage_token(r, i);
            const unsigned c = ((tid + i * S::kThreads) % (D / 8)) * 8;
            request(j, c, (r % S::kRing) * S::kRingKeys + j - r * S::kRingKeys, cached[i]);
        }
        qrt::cp_async_commit();
    };
    uint32_t next_slots[S::kRingCopies];  // the cache slots of the next stage requested
    for (unsigned r = 0; r < min(stages, S::kRing); ++r) {
        stage_slots(r, next_slots);
        request_stage(r, next_slots);
    }

    const unsigned j = tid % (D / 2);
    float sn, cs;
    decode_tc_angle<D>(args, fused, ctx, j, sn, cs);
    if (fused) qrt::pdl_wait();
    qrt::pdl_launch_dependents();

    decode_tc_queries<D, G, S::kThreads>(args, row, kvh, group, j, sn, cs, qs);
    // The newest key (rotated) and value: into the cache now, into its staged row once its
    // stage's place is free.
    __half newest_kv[4];
    if (has_newest && tid < D / 2)
        decode_tc_newest<D>(args, table, ctx, row, kvh, j, sn, cs, kc, vc, newest_kv);
    __syncthreads();

    uint32_t qa[D / 16][2];
    decode_tc_query_fragment<D, G>(qs, group, lane / 4, lane % 4, qa);
    DecodeTcState<D> st;
    for (unsigned r = 0; r < stages; ++r) {
        const bool refill = r + S::kRing < stages;
        if (refill) stage_slots(r + S::kRing, next_slots);
        // Stages r + 1 .. are requested up to the ring's size.
        cp_async_wait_at_most(min(stages - 1 - r, S::kRing - 1));
        const unsigned at = (r % S::kRing) * S::kRingKeys;
        if (has_newest && tid < D / 2 && newest / S::kRingKeys == r)
            decode_tc_stage_newest<D>(ks, vs, at + newest % S::kRingKeys, j, newest_kv);
        __syncthreads();
        const unsigned t0 = r * S::kRingKeys + warp * S::kKeys;
        if (t0 < n)
            decode_tc_step<D>(kb, vb, at + warp * S::kKeys, t0, min(t0 + S::kKeys, n), qa,
                              st);
        if (refill) {
            __syncthreads();  // every warp is done with the place the next request refills
            request_stage(r + S::kRing, next_slots);
        }
    }
    decode_tc_warp_result<D, G, S::kWarps>(warps, group, st.o, st.m, st.l);
    __syncthreads();
    finish_partition<D, G, S::kWarps, false, true, Merge::kWide>(args, active, row, warps,
                                                                  nullptr, nullptr);
}

}  // namespace

// Decode for groups of up to G heads: partitions merged in global memory, or in a cluster
// (the register and whole-partition tensor-core kernels); ring partitions in global memory.
#define QRT_ATTN_DECODE(D, NAME, G)                                                            \
    extern "C" __global__ void __launch_bounds__(DecodeShape<D>::kThreads, DecodeShape<D>::min_blocks(G)) \
        qrt_attn_decode_d##D##_g##NAME(const qrt_attn_args args) {                             \
        attn_decode<D, G, false>(args);                                                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(DecodeShape<D>::kThreads, DecodeShape<D>::min_blocks(G)) \
        qrt_attn_decode_d##D##_g##NAME##_cluster(const qrt_attn_args args) {                   \
        attn_decode<D, G, true>(args);                                                         \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(DecodeTcShape<D>::kThreads)                   \
        qrt_attn_decode_tc_d##D##_g##NAME(const qrt_attn_args args) {                          \
        attn_decode_tc<D, G, false>(args);                                                     \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(DecodeTcShape<D>::kThreads)                   \
        qrt_attn_decode_tc_d##D##_g##NAME##_cluster(const qrt_attn_args args) {                \
        attn_decode_tc<D, G, true>(args);                                                      \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(RingShape<D>::kThreads)                       \
        qrt_attn_decode_tc_ring_d##D##_g##NAME(const qrt_attn_args args) {                     \
        attn_decode_tc_ring<D, G>(args);                                                       \
    }

#define QRT_ATTN(D)                                                                            \
    extern "C" __global__ void __launch_bounds__(2 * kPrefillHalfThreads, 2)                     \
        qrt_attn_prefill_d##D(const qrt_attn_args args) {                                      \
        attn_prefill<D>(args);                                                                 \
    }                                                                                          \
    QRT_ATTN_DECODE(D, 4, 4)                                                                   \
    QRT_ATTN_DECODE(D, 8, kMaxGroup)

QRT_ATTN(64)
QRT_ATTN(128)
