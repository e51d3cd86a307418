// GEMM for prefill on Hopper's warpgroup tensor cores (sm_90): the same product, arguments and
// 128-column tiles as gemm.cu (c[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j]), f32 out), with
// wgmma instead of mma.sync. A block of WG warpgroups computes a (64 WG) x 128 tile of c, each
// warpgroup 64 rows with wgmma.m64n128k16 reading both operands from shared memory. The k
// dimension is walked 64 at a time (one 128-byte row per operand row, stored with the 128-byte
// swizzle wgmma's descriptors describe) through a kStages-deep cp.async ring: copies run two
// steps ahead and one batch of wgmma stays in flight while the next is issued. Out-of-range
// rows and k-chunks are zero-filled (k must be a multiple of 8). On sm_80 the kernels trap;
// the launcher takes gemm.cu there.

#include "common.cuh"
#include "qrt_kernels.h"
#include "wgmma.cuh"

namespace {

#if __CUDA_ARCH__ >= 900

constexpr int kBN = 128;
constexpr int kBK = 64;  // 16-bit values per 128-byte swizzle row
constexpr int kRowBytes = kBK * 2;
constexpr int kStages = 4;

// A block of WG warpgroups. Its dynamic shared memory (`gemm_wgmma_smem` in launch/gemm.rs) is
// kStages * kStageBytes, plus 1 KiB to align the ring to the 1 KiB swizzle atom.
template <int WG>
struct WgShape {
    static constexpr int kBM = 64 * WG;
    static constexpr int kThreads = 128 * WG;
    static constexpr int kStageBytes = (kBM + kBN) * kRowBytes;
};

// Byte offset of 16-byte chunk `ch` of row `row` in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swizzled(int row, int ch) {
    return row * kRowBytes + ((ch ^ (row & 7)) << 4);
}

// Copies ROWS tile rows from matrix row r0 on (see gemm_weight_row; `up` for GATED tiles) x
// k-step `kt` of [limit, k] matrices into the tile at `tile`.
template <typename W, int ROWS, int THREADS, bool GATED = false>
__device__ __forceinline__ void load_tile(uint32_t tile, const W* src, const W* up, int r0,
                                          int limit, int k, int kt) {
    for (int e = threadIdx.x; e < ROWS * 8; e += THREADS) {
        const int row = e / 8;
        const int ch = e % 8;
        const int col = kt * kBK + ch * 8;
        int matrix_row;
        const W* p = qrt::gemm_weight_row<W, GATED>(src, up, r0, row, k, matrix_row) + col;
        const bool valid = matrix_row < limit && col < k;
        qrt::cp_async16(tile + swizzled(row, ch), valid ? p : src, valid);
    }
}

template <typename W, int WG, bool GATED>
__device__ __forceinline__ void gemm_wgmma(const qrt_gemm_args& args) {
    using S = WgShape<WG>;
    extern __shared__ uint8_t smem[];

    qrt::pdl_enter();
    const qrt_gemm_segment seg = GATED ? args.seg[0] : qrt::gemm_segment(args);
    const W* a = reinterpret_cast<const W*>(args.a);
    const W* w = reinterpret_cast<const W*>(seg.w);
    const W* up = GATED ? reinterpret_cast<const W*>(args.seg[1].w) : nullptr;
    const int m = args.m, n = seg.n, k = args.k;
    const int m0 = blockIdx.y * S::kBM;
    // First matrix row of the weight tile: gated tiles hold 64 rows each of gate and up.
    const int n0 = GATED ? blockIdx.x * (kBN / 2) : (blockIdx.x - seg.first_tile) * kBN;
    const int wg = threadIdx.x / 128;
    const int ktiles = (k + kBK - 1) / kBK;
    const uint32_t ring =
        (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023) & ~1023u;
    // Stage s: the a tile (kBM rows), then the w tile (kBN rows).
    auto a_tile = [&](int s) { return ring + s * S::kStageBytes; };
    auto w_tile = [&](int s) { return ring + s * S::kStageBytes + S::kBM * kRowBytes; };
    auto load = [&](int kt) {
        if (kt < ktiles) {
            const int s = kt % kStages;
            load_tile<W, S::kBM, S::kThreads>(a_tile(s), a, nullptr, m0, m, k, kt);
            load_tile<W, kBN, S::kThreads, GATED>(w_tile(s), w, up, n0, n, k, kt);
        }
        qrt::cp_async_commit();
    };

    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.f;

    // Copies run two steps ahead. The stage a copy refills was read by the wgmma batch two
    // steps back, which every warpgroup has finished once all threads are past the barrier
    // (each waits for all but its latest batch before it).
    load(0);
    load(1);
    qrt::pin(d);
    for (int kt = 0; kt < ktiles; ++kt) {
        qrt::cp_async_wait<1>();
        // This thread's copies of step kt are in; make them visible to the tensor cores'
        // (async-proxy) reads, then wait for everyone's.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
        load(kt + 2);
        const int s = kt % kStages;
        const uint32_t at = a_tile(s) + wg * 64 * kRowBytes;
        const uint32_t wt = w_tile(s);
        qrt::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
            qrt::wgmma_m64n128k16<W>(d, qrt::descriptor(at + kk * 32), qrt::descriptor(wt + kk * 32));
        qrt::wgmma_commit();
        qrt::wgmma_wait<1>();
    }
    qrt::wgmma_wait<0>();
    qrt::pin(d);
    qrt::cp_async_wait<0>();

    // Accumulator i of this thread: row 16 (warp % 4) + lane / 4 (+ 8 for i % 4 >= 2) of the
    // warpgroup's 64, column 8 (i / 4) + 2 (lane % 4) + i % 2.
    float* c = reinterpret_cast<float*>(seg.c);
    const float* bias = reinterpret_cast<const float*>(seg.bias);
    const int lane = threadIdx.x % 32;
    const int row0 = m0 + wg * 64 + ((threadIdx.x / 32) % 4) * 16 + lane / 4;
    if constexpr (GATED) {
#pragma unroll
        for (int i = 0; i < 64; i += 2) {
            const int row = row0 + ((i % 4) / 2) * 8;
            const int out = n0 + (i / 4) * 4 + (lane % 4);
            if (row < m && out < n) qrt::store_gated<W>(seg, row, out, d[i], d[i + 1]);
        }
    } else {
        // In groups of 16 values whose loads (c's for the sum) are all issued before the
        // group's first store, so that their latencies overlap (the compiler cannot tell that
        // a store does not alias a later load).
        constexpr int kGroup = 16;
        const auto row_of = [&](int i) { return row0 + ((i % 4) / 2) * 8; };
        const auto col_of = [&](int i) { return n0 + (i / 4) * 8 + (lane % 4) * 2 + i % 2; };
#pragma unroll
        for (int g = 0; g < 64; g += kGroup) {
            float prev[kGroup];
#pragma unroll
            for (int j = 0; j < kGroup; ++j) {
                const int row = row_of(g + j), col = col_of(g + j);
                prev[j] = row < m && col < n && args.accumulate
                              ? __ldcg(c + static_cast<size_t>(row) * n + col)
                              : 0.f;
            }
#pragma unroll
            for (int j = 0; j < kGroup; ++j) {
                const int row = row_of(g + j), col = col_of(g + j);
                if (row < m && col < n)
                    c[static_cast<size_t>(row) * n + col] =
                        d[g + j] + (bias != nullptr ? bias[col] : 0.f) + prev[j];
            }
        }
    }
}

#else

template <typename W, int WG, bool GATED>
__device__ __forceinline__ void gemm_wgmma(const qrt_gemm_args&) {
    __trap();  // sm_90 only; the launcher never takes this kernel below it
}

#endif

}  // namespace

#define QRT_GEMM_WG(NAME, W, WG)                                                       \
    extern "C" __global__ void __launch_bounds__(128 * WG)                              \
        qrt_gemm_wg_##NAME##_w##WG(const qrt_gemm_args args) {                         \
        gemm_wgmma<W, WG, false>(args);                                                \
    }                                                                                  \
    extern "C" __global__ void __launch_bounds__(128 * WG)                              \
        qrt_gemm_wg_gated_##NAME##_w##WG(const qrt_gemm_args args) {                   \
        gemm_wgmma<W, WG, true>(args);                                                 \
    }

QRT_GEMM_WG(f16, __half, 1)
QRT_GEMM_WG(f16, __half, 2)
QRT_GEMM_WG(bf16, __nv_bfloat16, 1)
QRT_GEMM_WG(bf16, __nv_bfloat16, 2)
