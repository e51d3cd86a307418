// Batched GEMV on the tensor cores, for decode steps of 2 to 8 sequences:
// y[b, i] = sum_j x[b, j] * w[i, j] (+ bias[i]), weights f16 or bf16, activations rounded to the
// weight type (as the prefill GEMM does), f32 accumulation.
//
// With the FMA kernel (gemv.cu) a batch of 8 costs eight multiply-adds per weight, which makes a
// decode step of 8 sequences twice as slow as one of 1; here `mma.sync.m16n8k16` takes 16 weight
// rows against the 8 batch columns at once, so the weights stream at the same speed whatever
// the batch. Each lane loads its weights straight from global memory in 16-byte pieces: lane l
// reads 8 consecutive k of rows l/4 and l/4 + 8. That is not the k order of an mma fragment,
// but a dot product may sum its k in any order as long as weights and activations use the same
// one, so the activations are loaded in that same permuted order. A block computes 16-row
// tiles one after the other; its warps split k in steps of 32 and add their tiles in shared
// memory at the end of each.

#include <cooperative_groups.h>

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kUnroll = 4;  // k-steps of 32 per group: 2 * kUnroll weight loads per lane

// Two f32 values rounded to a packed pair of W.
template <typename W>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
    const typename qrt::Half16<W>::Pair h = qrt::Half16<W>::pack(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}

// The weights of one 16-row tile a lane reads: rows `lo` and `hi` of its fragment.
struct TileRows {
    qrt_gemv_segment seg;
    unsigned row0;
    const uint4* lo;
    const uint4* hi;
};

// GATED: two segments, gate and up, of the same shape; the tile's rows 0-7 are 8 rows of gate and
// rows 8-15 the same rows of up, so that each lane ends up holding gate and up sums of the same
// (row, batch) and writes silu(gate) * up into the gate segment's `y`.
//
// A block walks tiles blockIdx.x, + gridDim.x, ... (the grid is at most what is resident at
// once): the next tile's first weights are requested before the current tile's warps are
// summed, so no block ends and restarts between tiles and the loads stay in flight.
//
// `staged`: the block first rounds x (normalised when the launch says so) to 16-bit pairs in
// shared memory and every tile reads it from there; otherwise each tile reads x from L2
// again (the launcher stages when batch * (2k + 64) bytes fit and blocks walk several tiles).
//
// CLUSTER (sm_90; the grid and its clusters along z): the blocks of a cluster stage x
// together, always: block r of C reads the r-th of C slices of every row once, the rows'
// sums of squares are combined across the cluster in rank order (the same 1/rms in every
// block), and each block writes its slice, normalised and rounded, into the shared memory of
// every block of the cluster. x is then read from L2 once per cluster instead of once per
// block (twice with a norm).
template <typename W, int kWarps, bool GATED, bool CLUSTER = false>
__device__ __forceinline__ void gemv_tc(const qrt_gemv_args& args, unsigned batch,
                                        unsigned tiles, bool staged) {
    constexpr unsigned kOutRows = GATED ? 8 : 16;
    const unsigned k = args.k;
    const unsigned steps = k / 32;
    const unsigned warp = threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    const unsigned r = lane / 4;  // fragment row, and batch column
    const unsigned q = lane % 4;  // which 8 of the 32 k of a step

    // Tile t's segment (compile-time indices, so the arguments stay in registers) and rows.
    auto tile_rows = [&](unsigned t) {
        TileRows tr;
        tr.seg = args.seg[0];
        if (!GATED) {
#pragma unroll
            for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i) {
                if (i < args.num_segments && t >= args.seg[i].first_block) tr.seg = args.seg[i];
            }
        }
        tr.row0 = (t - tr.seg.first_block) * kOutRows;
        const W* w = reinterpret_cast<const W*>(tr.seg.w);
        const W* w2 = GATED ? reinterpret_cast<const W*>(args.seg[1].w) : w;
        const unsigned hi_row = GATED ? tr.row0 + r : tr.row0 + r + 8;
        tr.lo = reinterpret_cast<const uint4*>(
            w + static_cast<size_t>(min(tr.row0 + r, tr.seg.n - 1)) * k);
        tr.hi = reinterpret_cast<const uint4*>(
            w2 + static_cast<size_t>(min(hi_row, tr.seg.n - 1)) * k);
        return tr;
    };
    const bool has_x = r < batch;
    const float4* xr =
        reinterpret_cast<const float4*>(reinterpret_cast<const float*>(args.x) +
                                        static_cast<size_t>(has_x ? r : 0) * k);

    // The weights of the next group of steps are loaded while the current group is multiplied.
    uint4 lo[kUnroll], hi[kUnroll];
    auto load = [&](const TileRows& tr, unsigned first) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const unsigned step = first + u * kWarps;
            if (step < steps) {
                const unsigned c = step * 4 + q;  // 16-byte chunk of the row
                lo[u] = qrt::load_stream(tr.lo + c);
                hi[u] = qrt::load_stream(tr.hi + c);
            }
        }
    };
    const unsigned block = CLUSTER ? blockIdx.z : blockIdx.x;
    const unsigned blocks = CLUSTER ? gridDim.z : gridDim.x;
    unsigned t = block;
    // A block of a cluster without a tile still stages its share of x for the others.
    if (t >= tiles && !CLUSTER) return;
    TileRows cur = tile_rows(min(t, tiles - 1));
    if (t < tiles) load(cur, warp);
    qrt::pdl_enter();  // the first weights are on their way; now wait for x

    // A normalised input: each block computes the rows' 1/rms once (warp w sums the squares
    // of rows w, w + kWarps, ...); every product then reads x times the norm weights and
    // scales it before rounding, as the separate RMSNorm pass would have written it.
    const bool normed = args.norm != 0;
    __shared__ float row_scale[QRT_GEMV_MAX_BATCH];
    if (normed && !CLUSTER) {
        for (unsigned b = warp; b < batch; b += kWarps) {
            const float4* xb = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(
                                   args.x)) +
                               static_cast<size_t>(b) * (k / 4);
            float squares = 0.f;
            for (unsigned i = lane; i < k / 4; i += 32) {
                const float4 v = __ldcg(xb + i);
                squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
            squares = qrt::warp_sum(squares);
            if (lane == 0)
                row_scale[b] = 1.f / sqrtf(squares / static_cast<float>(k) + args.eps);
        }
        __syncthreads();
    }
    const float x_scale = normed && has_x && !CLUSTER ? row_scale[r] : 1.f;
    const float4* g4 = reinterpret_cast<const float4*>(args.norm);
    // x of batch row b, chunk c (8 values) as 16-bit pairs: the mma B fragments of a step.
    extern __shared__ uint4 x16[];
    // Rows 64 bytes apart beyond their length: the two rows a quarter warp reads (lanes r, q
    // and r + 1, q) fall in different banks.
    const unsigned row_chunks = k / 8 + 4;
    auto fragments = [&](const float4* xb, unsigned c, float scale) {
        float4 x0 = __ldcg(xb + 2 * c), x1 = __ldcg(xb + 2 * c + 1);
        if (normed) {
            x0 = qrt::scaled(x0, __ldg(g4 + 2 * c), scale);
            x1 = qrt::scaled(x1, __ldg(g4 + 2 * c + 1), scale);
        }
        return make_uint4(pack2<W>(x0.x, x0.y), pack2<W>(x0.z, x0.w), pack2<W>(x1.x, x1.y),
                          pack2<W>(x1.z, x1.w));
    };
    if constexpr (CLUSTER) {
#if __CUDA_ARCH__ >= 900
        namespace cg = cooperative_groups;
        const cg::cluster_group cluster = cg::this_cluster();
        const unsigned size = cluster.num_blocks();
        const unsigned rank = cluster.block_rank();
        const unsigned chunks = k / 8;
        const unsigned c0 = rank * chunks / size;
        const unsigned share = (rank + 1) * chunks / size - c0;
        __shared__ float squares[QRT_GEMV_MAX_BATCH];
        if (normed) {
            // This block's slice of each row: one warp a row.
            for (unsigned b = warp; b < batch; b += kWarps) {
                const float4* xb = reinterpret_cast<const float4*>(args.x) +
                                   static_cast<size_t>(b) * (k / 4);
                float sum = 0.f;
                for (unsigned c = c0 + lane; c < c0 + share; c += 32) {
                    const float4 v = __ldcg(xb + 2 * c), u = __ldcg(xb + 2 * c + 1);
                    sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                    sum += u.x * u.x + u.y * u.y + u.z * u.z + u.w * u.w;
                }
                sum = qrt::warp_sum(sum);
                if (lane == 0) squares[b] = sum;
            }
        }
        // Every block of the cluster has started (its shared memory may be written) and, with
        // a norm, holds its partial sums.
        cluster.sync();
        if (normed && threadIdx.x < batch) {
            float total = 0.f;
            for (unsigned r = 0; r < size; ++r)
                total += cluster.map_shared_rank(squares, r)[threadIdx.x];
            row_scale[threadIdx.x] = 1.f / sqrtf(total / static_cast<float>(k) + args.eps);
        }
        __syncthreads();
        for (unsigned i = threadIdx.x; i < batch * share; i += blockDim.x) {
            const unsigned b = i / share, c = c0 + i % share;
            const float4* xb = reinterpret_cast<const float4*>(args.x) + static_cast<size_t>(b) * (k / 4);
            const uint4 f = fragments(xb, c, normed ? row_scale[b] : 1.f);
            for (unsigned r = 0; r < size; ++r)
                cluster.map_shared_rank(x16, r)[b * row_chunks + c] = f;
        }
        // Every slice is in every block; no block reads another's shared memory after this.
        cluster.sync();
        if (t >= tiles) return;
#else
        __trap();  // clusters need sm_90; the launcher never takes this kernel below it
#endif
    } else if (staged) {
        for (unsigned i = threadIdx.x; i < batch * (k / 8); i += blockDim.x) {
            const unsigned b = i / (k / 8), c = i % (k / 8);
            const float4* xb = reinterpret_cast<const float4*>(args.x) + static_cast<size_t>(b) * (k / 4);
            x16[b * row_chunks + c] = fragments(xb, c, normed ? row_scale[b] : 1.f);
        }
        __syncthreads();
    }
    __shared__ float tile[kWarps][16][8];
    while (true) {
        // One accumulator per unrolled step (independent mma chains).
        float acc[kUnroll][4] = {};
        for (unsigned s = warp; s < steps; s += kUnroll * kWarps) {
            uint4 cur_lo[kUnroll], cur_hi[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                cur_lo[u] = lo[u];
                cur_hi[u] = hi[u];
            }
            load(cur, s + kUnroll * kWarps);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const unsigned step = s + u * kWarps;
                if (step >= steps) break;
                const unsigned c = step * 4 + q;
                uint4 xf = make_uint4(0, 0, 0, 0);  // batch columns past the batch: zeros
                if (has_x) xf = CLUSTER || staged ? x16[r * row_chunks + c] : fragments(xr, c, x_scale);
                qrt::mma16816<W>(acc[u], cur_lo[u].x, cur_hi[u].x, cur_lo[u].y, cur_hi[u].y,
                                 xf.x, xf.y);
                qrt::mma16816<W>(acc[u], cur_lo[u].z, cur_hi[u].z, cur_lo[u].w, cur_hi[u].w,
                                 xf.z, xf.w);
            }
        }
#pragma unroll
        for (int u = 1; u < kUnroll; ++u)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[0][e] += acc[u][e];

        // The next tile's first weights go out before this tile's sums.
        const unsigned next = t + blocks;
        TileRows nxt = cur;
        if (next < tiles) {
            nxt = tile_rows(next);
            load(nxt, warp);
        }

        // acc: rows r and r + 8, batch columns 2q and 2q + 1. Sum the warps' tiles.
        tile[warp][r][2 * q] = acc[0][0];
        tile[warp][r][2 * q + 1] = acc[0][1];
        tile[warp][r + 8][2 * q] = acc[0][2];
        tile[warp][r + 8][2 * q + 1] = acc[0][3];
        __syncthreads();
        if (threadIdx.x < kOutRows * 8) {
            const unsigned m = threadIdx.x / 8;
            const unsigned b = threadIdx.x % 8;
            const unsigned row = cur.row0 + m;
            if (b < batch && row < cur.seg.n) {
                float sum = 0.f;
#pragma unroll
                for (int i = 0; i < kWarps; ++i) sum += tile[i][m][b];
                if (GATED) {
                    float up = 0.f;
#pragma unroll
                    for (int i = 0; i < kWarps; ++i) up += tile[i][m + 8][b];
                    sum = qrt::swiglu(sum, up);
                }
                qrt::store_gemv_row<!GATED>(args, cur.seg, b, row, sum);
            }
        }
        if (next >= tiles) break;
        __syncthreads();  // the sums are read before the next tile writes them
        t = next;
        cur = nxt;
    }
}

}  // namespace

#define QRT_GEMV_TC_KERNEL(NAME, W, WARPS, GATED, CLUSTER)                                \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 16 / WARPS)                  \
        NAME(const qrt_gemv_args args, uint32_t batch, uint32_t tiles, uint32_t staged) { \
        gemv_tc<W, WARPS, GATED, CLUSTER>(args, batch, tiles, staged != 0);               \
    }

// Plain and gated, each also staging across a cluster (`_cs`).
#define QRT_GEMV_TC(NAME, W, WARPS)                                                       \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_##NAME##_w##WARPS, W, WARPS, false, false)             \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_gated_##NAME##_w##WARPS, W, WARPS, true, false)        \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_##NAME##_w##WARPS##_cs, W, WARPS, false, true)         \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_gated_##NAME##_w##WARPS##_cs, W, WARPS, true, true)

QRT_GEMV_TC(f16, __half, 8)
QRT_GEMV_TC(f16, __half, 16)
QRT_GEMV_TC(bf16, __nv_bfloat16, 8)
QRT_GEMV_TC(bf16, __nv_bfloat16, 16)
