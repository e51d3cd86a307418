// GEMM for prefill on Hopper (sm_90a), fed by the tensor memory accelerator: the product of
// gemm.cu (c[i, j] = sum_l a[i, l] * w[j, l] (+ bias[j]), f32 out, or added into c, for up to
// three matrices of one input), or SwiGLU's silu(a @ gate^T) * (a @ up^T) in 16 bits, in
// tiles of 128 rows by 256 weight rows (or 128, for products with few columns).
//
// A block is three warpgroups. One thread of the first (the producer) issues the TMA copies:
// per 64-wide k step a box of 128 rows of a and two of 128 weight rows (256 rows of w, or 128
// each of gate and up; one box for 128-wide tiles) with the 128-byte swizzle, into a ring of
// stages (4 of 48 KiB, or 6 of 32 KiB); each
// stage has a `full` mbarrier (the copies' bytes arrive on it) and an `empty` one (both
// consumers arrive once they have read it). The other two warpgroups (the consumers) each
// multiply 64 rows of a with wgmma.m64n256k16 (or n128), one batch of wgmma in flight while the next
// is issued, and release a stage when its batch is done. Out-of-range rows and k columns are
// zero-filled by the TMA unit.
//
// Split k in two: the two blocks of one tile form a cluster along z, each taking half of the
// k steps. Block r stores the 64 rows of its consumer r: the other consumer leaves its
// accumulators in the block's shared memory, and consumer r adds those of the other block to
// its own (two terms, so the same sum whatever the order) before storing them as an unsplit
// tile is stored.
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
constexpr int kBK = 64;                   // 16-bit values per 128-byte swizzle row
constexpr int kBoxBytes = 128 * kBK * 2;  // one TMA box: 128 rows of 128 bytes
constexpr int kRingBytes = 192 * 1024;

// A tile of BN (256 or 128) weight rows: a stage holds a box of a and BN / 128 boxes of w, and
// the ring as many stages as fit in 192 KiB. Dynamic shared memory (`GEMM_TMA_SMEM` in
// launch/gemm.rs): 1 KiB to align the ring to the swizzle atom, the ring, the full and empty
// barriers.
template <int BN>
struct Tile {
    static constexpr int kStageBytes = (1 + BN / 128) * kBoxBytes;
    static constexpr int kStages = kRingBytes / kStageBytes;
    static constexpr int kPartialStride = BN + 4;  // floats per partial row (split k)
    static_assert(kBM * kPartialStride * 4 <= kRingBytes, "partial tile fits the ring");
};

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

// The segment whose column tiles hold `tile` (gated products: the first, gate's).
template <bool GATED>
__device__ __forceinline__ int tile_segment(const qrt_gemm_args& args, int tile) {
    int si = 0;
#pragma unroll
    for (int i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i)
        if (!GATED && i < static_cast<int>(args.num_segments) &&
            tile >= static_cast<int>(args.seg[i].first_tile))
            si = i;
    return si;
}

// This block's k steps (of kBK): all, or its share of a split over the gridDim.z blocks of
// its cluster.
struct KSteps {
    int first, count;
};

__device__ __forceinline__ KSteps block_k_steps(uint32_t k) {
    const int all = (k + kBK - 1) / kBK;
    const int splits = gridDim.z;
    const int first = blockIdx.z * all / splits;
    return {first, static_cast<int>((blockIdx.z + 1) * all / splits - first)};
}

// The ring of kStages stages of kStageBytes in the block's dynamic shared memory (`base`),
// aligned to the swizzle atom, then a `full` mbarrier a stage (the producer's arrival and the
// copies' bytes) and an `empty` one (an arrival per consumer warpgroup).
template <int kStages, int kStageBytes>
struct Ring {
    uint32_t base, start, bars;

    __device__ __forceinline__ uint32_t full(int s) const { return bars + 8 * s; }
    __device__ __forceinline__ uint32_t empty(int s) const { return bars + 8 * (kStages + s); }
};

// The ring in `smem`, its barriers initialised by thread 0; every thread returns after the
// block's barrier.
template <int kStages, int kStageBytes>
__device__ __forceinline__ Ring<kStages, kStageBytes> ring_init(uint8_t* smem) {
    Ring<kStages, kStageBytes> r;
    r.base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    r.start = (r.base + 1023) & ~1023u;
    r.bars = r.start + kStages * kStageBytes;
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            barrier_init(r.full(s), 1);
            barrier_init(r.empty(s), 2);  // one arrival per consumer warpgroup
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    return r;
}

// Output row of accumulator i of this consumer thread (see wgmma.cuh), relative to the tile.
__device__ __forceinline__ int acc_row(int consumer, int i) {
    const int lane = threadIdx.x % 32;
    return consumer * 64 + ((threadIdx.x / 32) % 4) * 16 + lane / 4 + ((i % 4) / 2) * 8;
}

// Column of accumulator i of this thread within the tile.
__device__ __forceinline__ int acc_col(int i) {
    return (i / 4) * 8 + (threadIdx.x % 4) * 2 + i % 2;
}

// Stores consumer `consumer`'s accumulators `d` of the tile at rows m0.., weight rows r0.. of
// segment `seg` (plus its bias, added to c when `args.accumulate`); with `other` (split k), plus
// the other half's accumulators there, at the rows and columns of the tile they belong to.
// In groups of G accumulators whose loads (the other half's, c's for the sum) are all issued
// before the group's first store, so that their latencies overlap: the compiler cannot tell
// that a store does not alias a later load, and would otherwise wait for each load in turn.
template <int N, int STRIDE>
__device__ __forceinline__ void store_tile(const qrt_gemm_args& args, const qrt_gemm_segment& seg,
                                           int m0, int r0, int consumer, const float (&d)[N],
                                           const float* other) {
    // 64 accumulators a thread (128-wide tiles) in two groups, 128 in eight: what the
    // registers left beside the accumulators hold.
    constexpr int G = N == 64 ? 32 : 16;
    float* c = reinterpret_cast<float*>(seg.c);
    const float* bias = reinterpret_cast<const float*>(seg.bias);
    const int m = args.m, n = seg.n;
#pragma unroll
    for (int g = 0; g < N; g += G) {
        float v[G], prev[G];
#pragma unroll
        for (int j = 0; j < G; ++j) v[j] = d[g + j];
        if (other != nullptr) {
            // Accumulators j and j + 1 are neighbours in a row.
#pragma unroll
            for (int j = 0; j < G; j += 2) {
                const float2 o = *reinterpret_cast<const float2*>(
                    other + acc_row(consumer, g + j) * STRIDE + acc_col(g + j));
                v[j] += o.x;
                v[j + 1] += o.y;
            }
        }
        if (n % 2 == 0) {
            // Neighbours j, j + 1 (an even column) as one 8-byte access.
#pragma unroll
            for (int j = 0; j < G; j += 2) {
                const int row = m0 + acc_row(consumer, g + j), col = r0 + acc_col(g + j);
                const bool inside = row < m && col < n;
                if (inside && bias != nullptr) {
                    v[j] += bias[col];
                    v[j + 1] += bias[col + 1];
                }
                const float2 p = inside && args.accumulate
                                     ? __ldcg(reinterpret_cast<const float2*>(
                                           c + static_cast<size_t>(row) * n + col))
                                     : make_float2(0.f, 0.f);
                prev[j] = p.x;
                prev[j + 1] = p.y;
            }
#pragma unroll
            for (int j = 0; j < G; j += 2) {
                const int row = m0 + acc_row(consumer, g + j), col = r0 + acc_col(g + j);
                if (row < m && col < n)
                    *reinterpret_cast<float2*>(c + static_cast<size_t>(row) * n + col) =
                        make_float2(v[j] + prev[j], v[j + 1] + prev[j + 1]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const int row = m0 + acc_row(consumer, g + j), col = r0 + acc_col(g + j);
                const bool inside = row < m && col < n;
                if (inside && bias != nullptr) v[j] += bias[col];
                prev[j] = inside && args.accumulate
                              ? __ldcg(c + static_cast<size_t>(row) * n + col)
                              : 0.f;
            }
#pragma unroll
            for (int j = 0; j < G; ++j) {
                const int row = m0 + acc_row(consumer, g + j), col = r0 + acc_col(g + j);
                if (row < m && col < n) c[static_cast<size_t>(row) * n + col] = v[j] + prev[j];
            }
        }
    }
}

// Shared-memory bytes of one consumer's staged gated rows: 64 rows of 128 16-bit outputs, each
// padded by 16 bytes.
constexpr int kStagedGatedBytes = 64 * (128 * 2 + 16);

// silu(gate) * up of consumer `consumer`'s rows (row0.., outputs r0..; accumulator i is gate,
// i + 64 its up) through `tile`, then out to c in 16-byte pieces where n allows.
template <typename W>
__device__ __forceinline__ void store_gated_staged(const qrt_gemm_segment& seg, int m, int row0,
                                                   int r0, int consumer, const float (&d)[128],
                                                   uint8_t* tile) {
    constexpr int kStride = 128 + 8;  // 16-bit values a staged row
    W* t = reinterpret_cast<W*>(tile);
#pragma unroll
    for (int i = 0; i < 64; ++i)
        t[(acc_row(consumer, i) - consumer * 64) * kStride + acc_col(i)] =
            qrt::Half16<W>::from_float(qrt::swiglu(d[i], d[i + 64]));
    qrt::named_barrier(2 + consumer, 128);
    const int n = seg.n;
    W* c = reinterpret_cast<W*>(seg.c);
    const int t0 = threadIdx.x % 128;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int q = t0 + 128 * k;  // 16-byte piece q: row q / 16, outputs 8 (q % 16)..
        const int r = q / 16, out = r0 + 8 * (q % 16), row = row0 + r;
        if (row >= m) continue;
        const W* from = t + r * kStride + 8 * (q % 16);
        if (n % 8 == 0 && out + 8 <= n) {
            *reinterpret_cast<uint4*>(c + static_cast<size_t>(row) * n + out) =
                *reinterpret_cast<const uint4*>(from);
        } else {
            for (int e = 0; e < 8 && out + e < n; ++e)
                c[static_cast<size_t>(row) * n + out + e] = from[e];
        }
    }
}

template <typename W, int BN, bool GATED>
__device__ __forceinline__ void gemm_tma(const qrt_gemm_tma_args& p) {
    namespace cg = cooperative_groups;
    using T = Tile<BN>;
    constexpr int kStages = T::kStages;
    constexpr int kStageBytes = T::kStageBytes;
    constexpr int kAcc = BN / 2;  // accumulators per consumer thread
    extern __shared__ uint8_t smem[];
    const qrt_gemm_args& args = p.gemm;
    const int m = args.m;
    const int row_tiles = (m + kBM - 1) / kBM;
    const int m0 = (blockIdx.x % row_tiles) * kBM;
    const int col_tile = blockIdx.x / row_tiles;
    // The tile's segment (gated: gate and up), its maps, and its first weight row: BN rows of
    // the segment's matrix, or BN / 2 each of gate and up.
    const int si = tile_segment<GATED>(args, col_tile);
    const qrt_gemm_segment& seg = args.seg[si];
    const qrt_tensor_map& map0 = p.w[si];
    const qrt_tensor_map& map1 = p.w[GATED ? 1 : si];
    const int r0 = (col_tile - static_cast<int>(seg.first_tile)) * (GATED ? BN / 2 : BN);
    const KSteps steps = block_k_steps(args.k);
    const int splits = gridDim.z;
    const int kt0 = steps.first, ktiles = steps.count;

    const Ring<kStages, kStageBytes> rg = ring_init<kStages, kStageBytes>(smem);
    const uint32_t base = rg.base, ring = rg.start;
    auto full = [&](int s) { return rg.full(s); };
    auto empty = [&](int s) { return rg.empty(s); };
    qrt::pdl_enter();

    const int warpgroup = threadIdx.x / 128;
    float d[kAcc];
    if (warpgroup == 0) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < ktiles; ++i) {
                const int s = i % kStages;
                if (i >= kStages) barrier_wait(empty(s), (i / kStages - 1) & 1);
                barrier_expect(full(s), kStageBytes);
                const uint32_t at = ring + s * kStageBytes;
                const int x = (kt0 + i) * kBK;
                tma_load(at, p.a, x, m0, full(s));
                tma_load(at + kBoxBytes, map0, x, r0, full(s));
                if constexpr (BN == 256)
                    tma_load(at + 2 * kBoxBytes, map1, x, GATED ? r0 : r0 + 128, full(s));
            }
        }
    } else {
        const int consumer = warpgroup - 1;
#pragma unroll
        for (int i = 0; i < kAcc; ++i) d[i] = 0.f;
        qrt::pin(d);
        for (int i = 0; i < ktiles; ++i) {
            const int s = i % kStages;
            barrier_wait(full(s), (i / kStages) & 1);
            const uint32_t at = ring + s * kStageBytes + consumer * 64 * 128;
            const uint32_t wt = ring + s * kStageBytes + kBoxBytes;
            qrt::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kBK / 16; ++kk) {
                const uint64_t da = qrt::descriptor(at + kk * 32);
                const uint64_t dw = qrt::descriptor(wt + kk * 32);
                if constexpr (BN == 256)
                    qrt::wgmma_m64n256k16<W>(d, da, dw);
                else
                    qrt::wgmma_m64n128k16<W>(d, da, dw);
            }
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
            // silu(gate)·up of the consumer's 64 rows goes out through shared memory, in rows of
            // 16-byte stores. Both consumers' last wgmma must have read the ring before either
            // writes there.
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            qrt::named_barrier(1, 256);
            uint8_t* tile = smem + (ring - base) + consumer * kStagedGatedBytes;
            store_gated_staged<W>(seg, m, m0 + consumer * 64, r0, consumer, d, tile);
        } else {
            store_tile<kAcc, T::kPartialStride>(args, seg, m0, r0, consumer, d, nullptr);
        }
        return;
    }

    if constexpr (GATED) return;  // the gated kernel never splits
    // Split k: consumer r of the other block left its accumulators in that block's shared
    // memory (the ring, free once both consumers are done with it).
    const cg::cluster_group cluster = cg::this_cluster();
    if (splits != 2 || cluster.num_blocks() != 2) __trap();  // the two halves: one cluster
    const int rank = static_cast<int>(cluster.block_rank());
    float* partial = reinterpret_cast<float*>(smem + (ring - base));
    __syncthreads();  // both consumers are done reading the ring
    if (warpgroup == 2 - rank) {
        const int consumer = 1 - rank;
#pragma unroll
        for (int i = 0; i < kAcc; i += 2)
            *reinterpret_cast<float2*>(partial + acc_row(consumer, i) * T::kPartialStride +
                                       acc_col(i)) = make_float2(d[i], d[i + 1]);
    }
    cluster.sync();  // each block's half for the other is in its shared memory
    if (warpgroup == 1 + rank) {
        const int consumer = rank;
        const float* other = cluster.map_shared_rank(partial, 1 - rank);
        store_tile<kAcc, T::kPartialStride>(args, seg, m0, r0, consumer, d, other);
    }
    cluster.sync();  // no block leaves while the other reads its shared memory
}


// Products of 9 to 64 rows (batched decode): `gemm_skinny`. There are few rows of a and many
// weight rows, so the operands swap: a block multiplies 128 weight rows (gated: 128 rows each
// of gate and up) by every row of a, as wgmma.m64n64k16 with the weights as A (64 rows a
// consumer) and a box of 64 rows of a as B (the TMA unit zero-fills the rows past m). Such
// products have few weight tiles (the 1B's q/k/v: 24), so the k loop splits over a cluster of
// up to 8 blocks along z, and the weights still stream on every multiprocessor. Each block
// leaves its partial tile in its own shared memory, row-major by rows of a; after one cluster
// barrier, block z adds up its share of the tile's rows of c from every block in rank order
// (so the sum does not depend on timing) and stores them: f32 plus the bias (added into c when
// accumulating), or silu(gate) * up rounded to W. The `_ahead` kernels (small products)
// request their first stages' weights before the programmatic-launch wait.
constexpr int kSkinnyRows = 64;                           // rows of a a block takes: wgmma's N
constexpr int kSkinnyBoxBytes = kSkinnyRows * kBK * 2;  // one TMA box of a: 64 rows
constexpr int kMaxSkinnySplit = 8;                        // blocks of a cluster (portable)

// A skinny tile: a stage holds the weight box (gated: gate's and up's) and the box of a.
template <bool GATED>
struct SkinnyTile {
    static constexpr int kWeightBoxes = GATED ? 2 : 1;
    static constexpr int kStageBytes = kWeightBoxes * kBoxBytes + kSkinnyBoxBytes;
    static constexpr int kStages = kRingBytes / kStageBytes;
    static constexpr int kPartRows = 128 * kWeightBoxes;  // weight rows of a partial tile
    static constexpr int kPartStride = kPartRows + 4;     // floats per row of a
    static_assert(kSkinnyRows * kPartStride * 4 <= kRingBytes, "partial tile fits the ring");
};

template <typename W, bool GATED, bool AHEAD>
__device__ __forceinline__ void gemm_skinny(const qrt_gemm_tma_args& p) {
    namespace cg = cooperative_groups;
    using T = SkinnyTile<GATED>;
    constexpr int kStages = T::kStages;
    constexpr int kStageBytes = T::kStageBytes;
    extern __shared__ uint8_t smem[];
    const qrt_gemm_args& args = p.gemm;
    const int m = args.m;
    const int tile = blockIdx.x;
    const int si = tile_segment<GATED>(args, tile);
    const qrt_gemm_segment& seg = args.seg[si];
    const int r0 = (tile - static_cast<int>(seg.first_tile)) * 128;
    const KSteps steps = block_k_steps(args.k);
    const int splits = gridDim.z;
    const int kt0 = steps.first, ktiles = steps.count;

    const Ring<kStages, kStageBytes> rg = ring_init<kStages, kStageBytes>(smem);
    const uint32_t base = rg.base, ring = rg.start;
    auto full = [&](int s) { return rg.full(s); };
    auto empty = [&](int s) { return rg.empty(s); };
    // Step i's weight boxes into its stage, which expects them with the input's box.
    auto load_weights = [&](int i) {
        const int s = i % kStages;
        const uint32_t at = ring + s * kStageBytes;
        const int x = (kt0 + i) * kBK;
        barrier_expect(full(s), kStageBytes);
        tma_load(at, p.w[si], x, r0, full(s));
        if constexpr (GATED) tma_load(at + kBoxBytes, p.w[1], x, r0, full(s));
    };
    // AHEAD: the first stages' weights, which no kernel writes, requested before the wait.
    const int ahead = AHEAD ? (ktiles < kStages ? ktiles : kStages) : 0;
    if (threadIdx.x == 0)
        for (int i = 0; i < ahead; ++i) load_weights(i);
    qrt::pdl_enter();

    const int warpgroup = threadIdx.x / 128;
    float d[T::kWeightBoxes][kSkinnyRows / 2];  // weights (gate), then up
    if (warpgroup == 0) {
        if (threadIdx.x == 0) {
            for (int i = 0; i < ktiles; ++i) {
                const int s = i % kStages;
                if (i >= ahead) {
                    if (i >= kStages) barrier_wait(empty(s), (i / kStages - 1) & 1);
                    load_weights(i);
                }
                tma_load(ring + s * kStageBytes + T::kWeightBoxes * kBoxBytes, p.a,
                         (kt0 + i) * kBK, 0, full(s));
            }
        }
    } else {
        const int consumer = warpgroup - 1;
#pragma unroll
        for (int b = 0; b < T::kWeightBoxes; ++b) {
#pragma unroll
            for (int i = 0; i < kSkinnyRows / 2; ++i) d[b][i] = 0.f;
            qrt::pin(d[b]);
        }
        for (int i = 0; i < ktiles; ++i) {
            const int s = i % kStages;
            barrier_wait(full(s), (i / kStages) & 1);
            const uint32_t wt = ring + s * kStageBytes + consumer * 64 * 128;
            const uint32_t at = ring + s * kStageBytes + T::kWeightBoxes * kBoxBytes;
            qrt::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kBK / 16; ++kk) {
                const uint64_t da = qrt::descriptor(at + kk * 32);
#pragma unroll
                for (int b = 0; b < T::kWeightBoxes; ++b)
                    qrt::wgmma_m64n64k16<W>(d[b], qrt::descriptor(wt + b * kBoxBytes + kk * 32),
                                            da);
            }
            qrt::wgmma_commit();
            // The batch before this one is done: its stage may be refilled.
            qrt::wgmma_wait<1>();
            if (i > 0 && threadIdx.x % 128 == 0) barrier_arrive(empty((i - 1) % kStages));
        }
        qrt::wgmma_wait<0>();
#pragma unroll
        for (int b = 0; b < T::kWeightBoxes; ++b) qrt::pin(d[b]);
        // The wgmma reads of the ring (async proxy) come before the partial tile's stores.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }

    // This block's partial tile, part[row of a][weight row] (up's rows after gate's).
    float* part = reinterpret_cast<float*>(smem + (ring - base));
    __syncthreads();  // both consumers are done reading the ring
    if (warpgroup > 0) {
        const int consumer = warpgroup - 1;
#pragma unroll
        for (int b = 0; b < T::kWeightBoxes; ++b)
#pragma unroll
            for (int i = 0; i < kSkinnyRows / 2; ++i)
                part[acc_col(i) * T::kPartStride + b * 128 + acc_row(consumer, i)] = d[b][i];
    }
    const cg::cluster_group cluster = cg::this_cluster();
    if (splits > 1) {
        if (static_cast<int>(cluster.num_blocks()) != splits || splits > kMaxSkinnySplit)
            __trap();  // the k split is one cluster
        cluster.sync();  // every block's partial tile is in its shared memory
    } else {
        __syncthreads();
    }
    const int rank = splits > 1 ? static_cast<int>(cluster.block_rank()) : 0;
    const float* parts[kMaxSkinnySplit];
#pragma unroll
    for (int z = 0; z < kMaxSkinnySplit; ++z)
        parts[z] = splits > 1 && z < splits ? cluster.map_shared_rank(part, z) : part;
    // Rows b0..b1 of a are this block's to add up and store, 128 outputs a row.
    const int b0 = rank * m / splits, b1 = (rank + 1) * m / splits;
    const int n = seg.n;
    const float* bias = reinterpret_cast<const float*>(seg.bias);
    for (int e = threadIdx.x; e < (b1 - b0) * 128; e += blockDim.x) {
        const int row = b0 + e / 128, i = e % 128, col = r0 + i;
        if (col >= n) continue;
        const int at = row * T::kPartStride + i;
        float sum = 0.f, up = 0.f;
#pragma unroll
        for (int z = 0; z < kMaxSkinnySplit; ++z) {
            if (z < splits) {
                sum += parts[z][at];
                if (GATED) up += parts[z][at + 128];
            }
        }
        const size_t out = static_cast<size_t>(row) * n + col;
        if constexpr (GATED) {
            reinterpret_cast<W*>(seg.c)[out] = qrt::Half16<W>::from_float(qrt::swiglu(sum, up));
        } else {
            float* c = reinterpret_cast<float*>(seg.c);
            if (bias != nullptr) sum += bias[col];
            c[out] = args.accumulate ? sum + __ldcg(c + out) : sum;
        }
    }
    if (splits > 1) cluster.sync();  // no block leaves while another reads its shared memory
}

#else

template <typename W, int BN, bool GATED>
__device__ __forceinline__ void gemm_tma(const qrt_gemm_tma_args&) {
    __trap();  // sm_90 only; the launcher never takes this kernel below it
}

template <typename W, bool GATED, bool AHEAD>
__device__ __forceinline__ void gemm_skinny(const qrt_gemm_tma_args&) {
    __trap();  // sm_90 only; the launcher never takes this kernel below it
}

#endif

}  // namespace

#define QRT_GEMM_TMA(NAME, W)                                                              \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_tma_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {              \
        gemm_tma<W, 256, false>(args);                                                     \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_tma_n128_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {         \
        gemm_tma<W, 128, false>(args);                                                     \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_tma_gated_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {        \
        gemm_tma<W, 256, true>(args);                                                      \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_skinny_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {           \
        gemm_skinny<W, false, false>(args);                                                \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_skinny_gated_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {     \
        gemm_skinny<W, true, false>(args);                                                 \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_skinny_ahead_##NAME(const __grid_constant__ qrt_gemm_tma_args args) {     \
        gemm_skinny<W, false, true>(args);                                                 \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(384, 1)                                   \
        qrt_gemm_skinny_gated_ahead_##NAME(const __grid_constant__ qrt_gemm_tma_args args) { \
        gemm_skinny<W, true, true>(args);                                                  \
    }

QRT_GEMM_TMA(f16, __half)
QRT_GEMM_TMA(bf16, __nv_bfloat16)
