// GEMM for prefill on Hopper (sm_90a), fed by the tensor memory accelerator: the product of
// gemm.cu for one weight matrix (c[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j]), f32 out, or
// added into c), or SwiGLU's silu(a @ gate^T) * (a @ up^T) in 16 bits, in 128 x 256 tiles.
//
// A block is three warpgroups. One thread of the first (the producer) issues the TMA copies:
// per 64-wide k step a box of 128 rows of a and two of 128 weight rows (256 rows of w, or 128
// each of gate and up), 48 KiB with the 128-byte swizzle, into a ring of kStages stages; each
// stage has a `full` mbarrier (the copies' bytes arrive on it) and an `empty` one (both
// consumers arrive once they have read it). The other two warpgroups (the consumers) each
// multiply 64 rows of a with wgmma.m64n256k16, one batch of wgmma in flight while the next
// is issued, and release a stage when its batch is done. Out-of-range rows and k columns are
// zero-filled by the TMA unit.
//
// Split k: the blocks of one tile form a cluster along z, each taking a contiguous share of
// the k steps; their partial tiles meet in shared memory and block r sums rows r of every
// split's tile in rank order (the same sum whatever the timing), as gemm.cu does.
//
// Tiles are numbered with the row tiles fastest (blockIdx.x % row tiles), so that the blocks
// reading one weight tile run together and share it through L2. On sm_80 the kernels trap; the
// launcher takes them on compute capability 9.0 only.

#include <cooperative_groups.h>

#include "common.cuh"
#include "qrt_kernels.h"
#include "wgmma.cuh"

namespace {

#if __CUDA_ARCH__ >= 900

constexpr int kBM = 128;
constexpr int kBN = 256;
constexpr int kBK = 64;                     // 16-bit values per 128-byte swizzle row
constexpr int kBoxBytes = 128 * kBK * 2;    // one TMA box: 128 rows of 128 bytes
constexpr int kStageBytes = 3 * kBoxBytes;  // a (128 rows), then w (256 rows)
constexpr int kStages = 4;
constexpr int kPartialStride = kBN + 4;     // floats per partial row (split k)

// Dynamic shared memory (`GEMM_TMA_SMEM` in launch.rs): 1 KiB to align the ring to the swizzle
// atom, the ring, then the full and empty barriers.
static_assert(kStages * kStageBytes >= kBM * kPartialStride * 4, "partial tile fits the ring");

__device__ __forceinline__ void barrier_init(uint32_t bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

// The producer: one arrival that announces `bytes` of copies to come.
__device__ __forceinline__ void barrier_expect(uint32_t bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void barrier_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void barrier_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;"
            " selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}

// One TMA box of `map` (a kernel parameter) at (column x, row y) into shared memory at `dst`,
// its bytes counted on `bar`.
__device__ __forceinline__ void tma_load(uint32_t dst, const qrt_tensor_map& map, int x, int y,
                                         uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(bar)
        : "memory");
}

// Output row of accumulator i of this consumer thread (see wgmma.cuh), relative to the tile.
__device__ __forceinline__ int acc_row(int consumer, int i) {
    const int lane = threadIdx.x % 32;
    return consumer * 64 + ((threadIdx.x / 32) % 4) * 16 + lane / 4 + ((i % 4) / 2) * 8;
}

// Column of accumulator i of this thread within the 256 of the tile.
__device__ __forceinline__ int acc_col(int i) {
    return (i / 4) * 8 + (threadIdx.x % 4) * 2 + i % 2;
}

template <typename W, bool GATED>
__device__ __forceinline__ void gemm_tma(const qrt_gemm_tma_args& p) {
    namespace cg = cooperative_groups;
    extern __shared__ uint8_t smem[];
    const qrt_gemm_args& args = p.gemm;
    const qrt_gemm_segment& seg = args.seg[0];
    const int m = args.m, n = seg.n;
    const int row_tiles = (m + kBM - 1) / kBM;
    const int m0 = (blockIdx.x % row_tiles) * kBM;
    // First weight row of the tile: 256 rows of w, or 128 each of gate and up.
    const int r0 = (blockIdx.x / row_tiles) * (GATED ? kBN / 2 : kBN);
    // This block's k steps: all, or its share of a split.
    const int ktiles_all = (args.k + kBK - 1) / kBK;
    const int splits = gridDim.z;
    const int kt0 = blockIdx.z * ktiles_all / splits;
    const int ktiles = (blockIdx.z + 1) * ktiles_all / splits - kt0;

    const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t ring = (base + 1023) & ~1023u;
    const uint32_t bars = ring + kStages * kStageBytes;
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (kStages + s); };
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            barrier_init(full(s), 1);
            barrier_init(empty(s), 2);  // one arrival per consumer warpgroup
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    qrt::pdl_enter();

    const int warpgroup = threadIdx.x / 128;
    float d[128];
    if (warpgroup == 0) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < ktiles; ++i) {
                const int s = i % kStages;
                if (i >= kStages) barrier_wait(empty(s), (i / kStages - 1) & 1);
                barrier_expect(full(s), kStageBytes);
                const uint32_t at = ring + s * kStageBytes;
                const int x = (kt0 + i) * kBK;
                tma_load(at, p.a, x, m0, full(s));
                tma_load(at + kBoxBytes, p.w[0], x, r0, full(s));
                tma_load(at + 2 * kBoxBytes, p.w[GATED ? 1 : 0], x, GATED ? r0 : r0 + 128,
                         full(s));
            }
        }
    } else {
        const int consumer = warpgroup - 1;
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.f;
        qrt::pin(d);
        for (int i = 0; i < ktiles; ++i) {
            const int s = i % kStages;
            barrier_wait(full(s), (i / kStages) & 1);
            const uint32_t at = ring + s * kStageBytes + consumer * 64 * 128;
            const uint32_t wt = ring + s * kStageBytes + kBoxBytes;
            qrt::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kBK / 16; ++kk)
                qrt::wgmma_m64n256k16<W>(d, qrt::descriptor(at + kk * 32),
                                         qrt::descriptor(wt + kk * 32));
            qrt::wgmma_commit();
            // The batch before this one is done: its stage may be refilled.
            qrt::wgmma_wait<1>();
            if (i > 0 && threadIdx.x % 128 == 0) barrier_arrive(empty((i - 1) % kStages));
        }
        qrt::wgmma_wait<0>();
        qrt::pin(d);
    }

    if (splits == 1) {
        if (warpgroup == 0) return;
        const int consumer = warpgroup - 1;
        if constexpr (GATED) {
            // Column j < 128 of the tile is gate row r0 + j, column 128 + j its up row: the
            // same thread's accumulators i and i + 64.
#pragma unroll
            for (int i = 0; i < 64; ++i) {
                const int row = m0 + acc_row(consumer, i);
                const int out = r0 + acc_col(i);
                if (row < m && out < n) qrt::store_gated<W>(seg, row, out, d[i], d[i + 64]);
            }
        } else {
            float* c = reinterpret_cast<float*>(seg.c);
            const float* bias = reinterpret_cast<const float*>(seg.bias);
#pragma unroll
            for (int i = 0; i < 128; ++i) {
                const int row = m0 + acc_row(consumer, i);
                const int col = r0 + acc_col(i);
                if (row < m && col < n) {
                    float v = d[i];
                    if (bias != nullptr) v += bias[col];
                    qrt::store_result(c + static_cast<size_t>(row) * n + col, v,
                                      args.accumulate);
                }
            }
        }
        return;
    }

    // Split k (never gated): partial tiles through the cluster's shared memory.
    const cg::cluster_group cluster = cg::this_cluster();
    if (cluster.num_blocks() != gridDim.z) __trap();  // the splits of a tile: one cluster
    float* partial = reinterpret_cast<float*>(smem + (ring - base));
    __syncthreads();  // both consumers are done reading the ring
    if (warpgroup > 0) {
#pragma unroll
        for (int i = 0; i < 128; ++i)
            partial[acc_row(warpgroup - 1, i) * kPartialStride + acc_col(i)] = d[i];
    }
    cluster.sync();  // every block's partial tile is in its shared memory
    const int rows = kBM / splits;
    const int rank = static_cast<int>(cluster.block_rank());
    float* c = reinterpret_cast<float*>(seg.c);
    const float* bias = reinterpret_cast<const float*>(seg.bias);
    for (int e = threadIdx.x; e < rows * kBN; e += blockDim.x) {
        const int row = rank * rows + e / kBN;
        const int col = e % kBN;
        float v = 0.f;
        for (int r = 0; r < splits; ++r)
            v += cluster.map_shared_rank(partial, r)[row * kPartialStride + col];
        if (m0 + row < m && r0 + col < n) {
            if (bias != nullptr) v += bias[r0 + col];
            qrt::store_result(c + static_cast<size_t>(m0 + row) * n + r0 + col, v,
                              args.accumulate);
        }
    }
    cluster.sync();  // no block leaves while the others read its shared memory
}

#else

template <typename W, bool GATED>
__device__ __forceinline__ void gemm_tma(const qrt_gemm_tma_args&) {
    __trap();  // sm_90 only; the launcher never takes this kernel below it
}

#endif

}  // namespace

#define QRT_GEMM_TMA(NAME, W)                                                              \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_tma_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {              \
        gemm_tma<W, false>(args);                                                          \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_tma_gated_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {        \
        gemm_tma<W, true>(args);                                                           \
    }

QRT_GEMM_TMA(f16, __half)
QRT_GEMM_TMA(bf16, __nv_bfloat16)
