// GEMM for prefill on the tensor cores: c[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j]), with
// a [m, k] and w [n, k] 16-bit (both f16 or both bf16), c [m, n] f32, f32 accumulation. Up to
// three matrices that multiply the same `a` (q, k and v) share one launch. The gated kernels
// (`qrt_gemm_gated_*`) take SwiGLU's gate and up rows interleaved in one weight tile and write
// silu(gate) * up as 16-bit values, the down projection's input.
//
// mma.sync m16n8k16 (sm_80 and newer). A block of 8 warps computes a BM x 128 tile of c
// (BM = 128 or 64), the warps as 2 x 4, each a (BM / 2) x 32 sub-tile. The k dimension is
// walked in steps of 32 through a 3-stage cp.async pipeline; shared-memory rows of 64 bytes
// have their four 16-byte chunks XOR-swizzled by (row / 2) % 4, so that ldmatrix reads of 8
// rows hit 8 different bank groups. Out-of-range rows and k-chunks are zero-filled by cp.async
// (k must be a multiple of 8).
//
// Split k (sm_90, BM = 64, plain kernels): with gridDim.z = S > 1 the S blocks of a tile form a
// thread-block cluster, each multiplies its S-th of the k steps, leaves its partial tile in
// shared memory, and block r sums rows [64r/S, 64(r+1)/S) of all S partial tiles through
// distributed shared memory, in rank order (deterministic), before the epilogue. For shapes
// with fewer tiles than multiprocessors (the 1B's o and down projections at 512 rows: 128
// tiles on 132 SMs, one 8-warp block each).
//
// Split k without clusters (compute capabilities other than 9.0, `qrt_gemm_gsplit_*`, BM = 64, plain and gated): each
// of the S blocks of a tile multiplies its S-th of the k steps and stores its accumulators in
// a slot of its own of a workspace in global memory, then counts itself in the tile's counter;
// the block that arrives last sums the S slots in split order (deterministic, whichever block
// is last), sets the counter back to zero for the next launch, and runs the epilogue. Batched
// decode on such GPUs (the A100) has few tiles (the 1B's down projection: 16) and long k loops, which
// one block a tile streams at a fraction of the bandwidth.

#include <cooperative_groups.h>

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kBN = 128;
constexpr int kBK = 32;
constexpr int kStages = 3;
constexpr int kThreads = 256;

// Offset (in elements) of chunk `ch` (8 elements) of tile row `row`.
__device__ __forceinline__ int swizzled(int row, int ch) {
    return row * kBK + ((ch ^ ((row >> 1) & 3)) << 3);
}

// Copies ROWS tile rows from matrix row r0 on (see gemm_weight_row; `up` for GATED tiles) x
// k-chunks of step `kt` of [limit, k] matrices into `tile`.
template <typename W, int ROWS, bool GATED = false>
__device__ __forceinline__ void load_tile(uint32_t tile, const W* src, const W* up, int r0,
                                          int limit, int k, int kt) {
#pragma unroll
    for (int j = 0; j < ROWS * 4 / kThreads; ++j) {
        const int i = threadIdx.x + j * kThreads;
        const int row = i / 4;
        const int ch = i % 4;
        const int col = kt * kBK + ch * 8;
        int matrix_row;
        const W* p = qrt::gemm_weight_row<W, GATED>(src, up, r0, row, k, matrix_row) + col;
        const bool valid = matrix_row < limit && col < k;
        qrt::cp_async16(tile + swizzled(row, ch) * 2, valid ? p : src, valid);
    }
}

// Split k, after the main loop of a BM = 64 block (see the header): the partial tile into
// shared memory, the cluster's partial tiles summed for this block's rows, the epilogue.
__device__ __forceinline__ void split_k_epilogue(const float (&acc)[2][4][4], unsigned char* smem,
                                                 const qrt_gemm_args& args, float* c,
                                                 const float* bias, int m0, int n0, int m,
                                                 int n) {
#if __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    constexpr int kPartialStride = kBN + 8;  // floats per partial row: 128 and 8 of padding
    const cg::cluster_group cluster = cg::this_cluster();
    if (cluster.num_blocks() != gridDim.z) __trap();  // the splits of a tile: one cluster
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int warp_m = warp / 4;
    const int warp_n = warp % 4;
    float* partial = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done with the pipeline's shared memory
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int row = warp_m * 32 + mi * 16 + lane / 4 + half * 8;
                    const int col = warp_n * 32 + ni * 8 + (lane % 4) * 2 + e;
                    partial[row * kPartialStride + col] = acc[mi][ni][half * 2 + e];
                }
    cluster.sync();  // every block's partial tile is in its shared memory
    const unsigned splits = cluster.num_blocks();
    const unsigned rank = cluster.block_rank();
    const int rows = 64 / static_cast<int>(splits);
    // Eight values a thread at a time, their loads (partials, c's for the sum) all issued
    // before the first store.
    constexpr int kGroup = 8;
    // Value i of the band: its row of the tile (band `rank`).
    const auto row_of = [&](int i) { return static_cast<int>(rank) * rows + i / kBN; };
    for (int i0 = threadIdx.x; i0 < rows * kBN; i0 += kGroup * blockDim.x) {
        float v[kGroup], prev[kGroup];
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
            const int i = i0 + j * static_cast<int>(blockDim.x);
            const int row = row_of(i), col = i % kBN;
            const bool inside = i < rows * kBN && m0 + row < m && n0 + col < n;
            v[j] = 0.f;
            if (i < rows * kBN)
                for (unsigned r = 0; r < splits; ++r)
                    v[j] += cluster.map_shared_rank(partial, r)[row * kPartialStride + col];
            prev[j] = inside && args.accumulate
                          ? __ldcg(c + static_cast<size_t>(m0 + row) * n + n0 + col)
                          : 0.f;
        }
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
            const int i = i0 + j * static_cast<int>(blockDim.x);
            const int row = row_of(i), col = i % kBN;
            if (i < rows * kBN && m0 + row < m && n0 + col < n)
                c[static_cast<size_t>(m0 + row) * n + n0 + col] =
                    v[j] + (bias != nullptr ? bias[n0 + col] : 0.f) + prev[j];
        }
    }
    cluster.sync();  // no block leaves while the others read its shared memory
#else
    __trap();  // clusters need sm_90; the launcher never splits k below it
#endif
}

// Split k without clusters (see the header): this block's accumulators into its slot of
// `partials` (a slot: MI x NI x kThreads float4, fragment-major so that a warp's stores and
// loads are contiguous; fragments wholly past row m are skipped), then whether it is the last
// of its tile's blocks to arrive, in which case acc holds the sum of every slot of the tile.
template <int BM, int MI, int NI>
__device__ __forceinline__ bool gather_split(float (&acc)[MI][NI][4], float4* partials,
                                             unsigned* counters, int m0, int m) {
    __shared__ bool last;
    const unsigned tile = blockIdx.y * gridDim.x + blockIdx.x;
    const unsigned splits = gridDim.z;
    const int warp_m = threadIdx.x / 32 / 4;
    constexpr int kSlot = MI * NI * kThreads;
    const auto live = [&](int mi) { return m0 + warp_m * (BM / 2) + mi * 16 < m; };
    const auto at = [&](unsigned split, int mi, int ni) {
        return (static_cast<size_t>(tile) * splits + split) * kSlot + (mi * NI + ni) * kThreads +
               threadIdx.x;
    };
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
            if (live(mi))
                __stcg(partials + at(blockIdx.z, mi, ni),
                       make_float4(acc[mi][ni][0], acc[mi][ni][1], acc[mi][ni][2],
                                   acc[mi][ni][3]));
    __threadfence();  // the slot is visible device-wide before the block is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(counters + tile, 1u) == splits - 1;
        // The other blocks' slots, counted before this one, are seen; the barrier below
        // carries that to the block's other threads.
        if (last) __threadfence();
    }
    __syncthreads();
    if (!last) return false;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
            for (unsigned s = 0; s < splits && live(mi); ++s) {
                const float4 v = __ldcg(partials + at(s, mi, ni));
                sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
            }
            acc[mi][ni][0] = sum.x;
            acc[mi][ni][1] = sum.y;
            acc[mi][ni][2] = sum.z;
            acc[mi][ni][3] = sum.w;
        }
    if (threadIdx.x == 0) counters[tile] = 0;  // ready for the next launch
    return true;
}

// GSPLIT: split k through `partials` and `counters` (see gather_split); unused otherwise.
template <typename W, int BM, bool GATED, bool GSPLIT = false>
__device__ __forceinline__ void gemm(const qrt_gemm_args& args, float4* partials = nullptr,
                                     unsigned* counters = nullptr) {
    constexpr int MI = BM / 32;  // m16 tiles per warp
    constexpr int NI = 4;        // n8 tiles per warp
    // The pipeline's stages of a and w tiles; with split k, the partial tile afterwards.
    constexpr int kPipelineBytes = kStages * (BM + kBN) * kBK * 2;
    __shared__ __align__(128) unsigned char smem[kPipelineBytes];

    qrt::pdl_enter();
    const qrt_gemm_segment seg = GATED ? args.seg[0] : qrt::gemm_segment(args);
    const W* a = reinterpret_cast<const W*>(args.a);
    const W* w = reinterpret_cast<const W*>(seg.w);
    const W* up = GATED ? reinterpret_cast<const W*>(args.seg[1].w) : nullptr;
    const int m = args.m, n = seg.n, k = args.k;
    const int m0 = blockIdx.y * BM;
    // First matrix row of the weight tile: gated tiles hold 64 rows each of gate and up.
    const int n0 = GATED ? blockIdx.x * (kBN / 2) : (blockIdx.x - seg.first_tile) * kBN;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int warp_m = warp / 4;
    const int warp_n = warp % 4;
    // This block's k steps: all, or its share of a split.
    const int ktiles_all = (k + kBK - 1) / kBK;
    const int splits = gridDim.z;
    const int kt0 = blockIdx.z * ktiles_all / splits;
    const int ktiles = (blockIdx.z + 1) * ktiles_all / splits - kt0;

    const uint32_t base_a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t base_b = base_a + kStages * BM * kBK * 2;
    constexpr uint32_t stage_a = BM * kBK * 2;
    constexpr uint32_t stage_b = kBN * kBK * 2;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < ktiles) {
            load_tile<W, BM>(base_a + s * stage_a, a, nullptr, m0, m, k, kt0 + s);
            load_tile<W, kBN, GATED>(base_b + s * stage_b, w, up, n0, n, k, kt0 + s);
        }
        qrt::cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        qrt::cp_async_wait<kStages - 2>();
        __syncthreads();
        const int next = kt + kStages - 1;
        if (next < ktiles) {
            const int st = next % kStages;
            load_tile<W, BM>(base_a + st * stage_a, a, nullptr, m0, m, k, kt0 + next);
            load_tile<W, kBN, GATED>(base_b + st * stage_b, w, up, n0, n, k, kt0 + next);
        }
        qrt::cp_async_commit();

        const int st = kt % kStages;
        const uint32_t ta = base_a + st * stage_a;
        const uint32_t tb = base_b + st * stage_b;
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
            uint32_t af[MI][4];
            uint32_t bf[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                const int row = warp_m * (BM / 2) + mi * 16 + (lane & 15);
                const int ch = kk * 2 + (lane >> 4);
                qrt::ldmatrix_x4(af[mi], ta + swizzled(row, ch) * 2);
            }
#pragma unroll
            for (int nj = 0; nj < NI / 2; ++nj) {
                const int row = warp_n * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int ch = kk * 2 + ((lane >> 3) & 1);
                uint32_t r[4];
                qrt::ldmatrix_x4(r, tb + swizzled(row, ch) * 2);
                bf[2 * nj][0] = r[0];
                bf[2 * nj][1] = r[1];
                bf[2 * nj + 1][0] = r[2];
                bf[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
                    qrt::mma16816<W>(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3],
                                     bf[ni][0], bf[ni][1]);
        }
    }
    qrt::cp_async_wait<0>();

    float* c = reinterpret_cast<float*>(seg.c);
    const float* bias = reinterpret_cast<const float*>(seg.bias);
    if constexpr (GSPLIT) {
        if (splits > 1 && !gather_split<BM>(acc, partials, counters, m0, m)) return;
    } else if constexpr (BM == 64 && !GATED) {
        if (splits > 1) {
            split_k_epilogue(acc, smem, args, c, bias, m0, n0, m, n);
            return;
        }
    }
    if constexpr (GATED) {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const int col = n0 + warp_n * 32 + ni * 8 + (lane % 4) * 2;
                const int out = n0 + (col - n0) / 2;
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = m0 + warp_m * (BM / 2) + mi * 16 + lane / 4 + half * 8;
                    if (row < m && out < n)
                        qrt::store_gated<W>(seg, row, out, acc[mi][ni][half * 2],
                                            acc[mi][ni][half * 2 + 1]);
                }
            }
    } else {
        // Every value this thread adds to c is requested before its first store, so that the
        // loads' latencies overlap (the compiler cannot tell that a store does not alias a
        // later load).
        // Accumulator q of fragment (mi, ni): its row and column of c.
        const auto row_of = [&](int mi, int q) {
            return m0 + warp_m * (BM / 2) + mi * 16 + lane / 4 + (q / 2) * 8;
        };
        const auto col_of = [&](int ni, int q) {
            return n0 + warp_n * 32 + ni * 8 + (lane % 4) * 2 + q % 2;
        };
        float prev[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int row = row_of(mi, q), col = col_of(ni, q);
                    prev[mi][ni][q] = row < m && col < n && args.accumulate
                                          ? __ldcg(c + static_cast<size_t>(row) * n + col)
                                          : 0.f;
                }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int row = row_of(mi, q), col = col_of(ni, q);
                    if (row < m && col < n)
                        c[static_cast<size_t>(row) * n + col] =
                            acc[mi][ni][q] + (bias != nullptr ? bias[col] : 0.f) +
                            prev[mi][ni][q];
                }
    }
}

}  // namespace

#define QRT_GEMM(NAME, W, BM)                                                          \
    extern "C" __global__ void __launch_bounds__(kThreads)                             \
        qrt_gemm_##NAME##_m##BM(const qrt_gemm_args args) {                            \
        gemm<W, BM, false>(args);                                                      \
    }                                                                                  \
    extern "C" __global__ void __launch_bounds__(kThreads)                             \
        qrt_gemm_gated_##NAME##_m##BM(const qrt_gemm_args args) {                      \
        gemm<W, BM, true>(args);                                                       \
    }

// Split k through global memory (BM = 64): the workspace's slots, then the tiles' counters.
#define QRT_GEMM_GSPLIT(NAME, W)                                                       \
    extern "C" __global__ void __launch_bounds__(kThreads)                             \
        qrt_gemm_gsplit_##NAME(const qrt_gemm_args args, float4* partials,             \
                               unsigned* counters) {                                   \
        gemm<W, 64, false, true>(args, partials, counters);                            \
    }                                                                                  \
    extern "C" __global__ void __launch_bounds__(kThreads)                             \
        qrt_gemm_gsplit_gated_##NAME(const qrt_gemm_args args, float4* partials,       \
                                     unsigned* counters) {                             \
        gemm<W, 64, true, true>(args, partials, counters);                             \
    }

QRT_GEMM(f16, __half, 128)
QRT_GEMM(f16, __half, 64)
QRT_GEMM(bf16, __nv_bfloat16, 128)
QRT_GEMM(bf16, __nv_bfloat16, 64)
QRT_GEMM_GSPLIT(f16, __half)
QRT_GEMM_GSPLIT(bf16, __nv_bfloat16)
