// GEMV for a decode step of one sequence: y[i] = sum_j x'[j] * w[i, j] (+ bias[i]) (+ y[i]),
// 16-bit weights, f32 activations and accumulation, where x' is x or its RMSNorm.
//
// At batch one a decode step is a chain of small kernels that each stream a few MB of weights,
// so what costs is latency, not arithmetic. This kernel is built to keep weight loads in flight:
//   - the grid is sized to be resident at once (a few blocks per multiprocessor) and each warp
//     walks its own pairs of rows (a gated launch pairs a gate row with the same row of up), so
//     no block waits for a second wave and no warp waits for another;
//   - a warp loads 8 chunks of 16 bytes per lane of both rows of a pair at once (16 loads in
//     flight per lane; with few rows, 16 chunks of one row), then multiplies them; the loads
//     and the products are one straight run of code with predicated loads and no branch: ptxas waits for every load in flight at the
//     first branch after them, so a branch per load would leave one load in flight;
//   - the first loads are issued before the grid-dependency wait (weights never change), so
//     with programmatic dependent launch they overlap the previous kernel's tail. The plain
//     kernels hold 16 loads per lane in ~120 registers, two blocks fill a multiprocessor's
//     registers, and the next kernel is let in only at the end (earlier, measured slower: its
//     blocks compete for bandwidth and room they cannot use yet). The lean kernels, for short
//     rows, hold one row (gated: one pair, 4 chunks per lane each) per warp in 64 registers:
//     four blocks fit, and the next kernel is let in once x is ready, so that its blocks
//     issue their own weight loads while this one finishes (H200 decode steps: SmolLM2
//     0.650 -> 0.534 ms, Llama-3.2-1B 0.962 -> 0.916 ms, Llama-3.1-8B 4.44 -> 4.34 ms);
//   - after the wait, the block stages x once in shared memory (split in two halves of each
//     16-byte chunk so that the lanes' reads are contiguous), computing the sum of squares on
//     the way when the input is normalised: RMSNorm's scale 1/rms is applied to the finished
//     dot products, its weights to the staged x, so the norm needs no kernel of its own.
//     ptxas gives x's loads the scoreboard of the weight loads in flight (SASS of every
//     kernel here but the lean gated one), so a block stages x once its first weights have
//     arrived. Staging x apart from them (cp.async, or a piece at a time) and loading half
//     of each row only after x did not speed the decode (RESULTS log 47);
//   - the epilogue adds a bias, applies SwiGLU or adds into y (the residual stream), so neither
//     needs a kernel either;
//   - rows of 3 to 7 x 2048 of one matrix, not normalised (the Llama down projections), go to a
//     tiled kernel instead, whose warps share rows so that a block's loads at a time lie
//     together in memory (see gemv_one_tiled).

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr unsigned kWarps = 8;  // warps per block

// A row of the launch (global index over the segments): its segment and its row there.
struct RowRef {
    qrt_gemv_segment seg;
    unsigned row;
};

// (Compile-time segment indices only, so that the arguments stay out of local memory.)
template <bool GATED>
__device__ __forceinline__ RowRef find_row(const qrt_gemv_args& args, unsigned global) {
    RowRef ref{args.seg[0], global};
    if (GATED) return ref;
    unsigned start = args.seg[0].n;
#pragma unroll
    for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i) {
        if (i < args.num_segments && global >= start) ref = {args.seg[i], global - start};
        start += i < args.num_segments ? args.seg[i].n : 0;
    }
    return ref;
}

// Writes the result `v` of row `global` (qrt::store_gemv_row).
template <bool GATED>
__device__ __forceinline__ void store(const qrt_gemv_args& args, unsigned global, float v) {
    const RowRef ref = find_row<GATED>(args, global);
    qrt::store_gemv_row<!GATED>(args, ref.seg, 0, ref.row, v);
}

// Stages the input x (times the norm weights where the launch normalises and MAY_NORM) in
// shared memory, split in two halves of each 16-byte chunk (x_lo, x_hi) so that the lanes'
// reads are contiguous, and returns the norm's scale 1/rms (1 without a norm), which the caller
// applies to its finished dot products. Ends with a barrier of the block. (Without MAY_NORM the
// code has no norm path: in the tiled kernel that path, never taken, left ptxas scheduling the
// weight loads around it differently, RESULTS log 48.)
//
// A thread requests kAhead pieces of x (and of the norm weights) before it uses any, so that a
// long row costs one round trip to L2 per kAhead pieces rather than one per piece (the loop was
// compiled with one load per iteration, each waiting for the one before). Pieces past the row
// are not loaded (loading a clamped address instead cost SmolLM2's short rows 4%).
template <unsigned kAhead, bool MAY_NORM = true>
__device__ __forceinline__ float stage_input(const qrt_gemv_args& args, unsigned k, float4* x_lo,
                                             float4* x_hi) {
    const float4* x4 = reinterpret_cast<const float4*>(args.x);
    const float4* g4 = reinterpret_cast<const float4*>(args.norm);
    const bool normed = MAY_NORM && args.norm != 0;
    const unsigned pieces = k / 4;
    float squares = 0.f;
    for (unsigned i0 = threadIdx.x; i0 < pieces; i0 += kAhead * blockDim.x) {
        // (Volatile loads: the compiler keeps them in this order, ahead of the stores; the
        // intrinsics were sunk to their first use.)
        uint4 v[kAhead], g[kAhead];
#pragma unroll
        for (unsigned j = 0; j < kAhead; ++j) {
            const unsigned i = i0 + j * blockDim.x;
            qrt::load_cg_if(v[j], x4 + i, i < pieces);
            qrt::load_nc_if(g[j], g4 + i, normed && i < pieces);
        }
#pragma unroll
        for (unsigned j = 0; j < kAhead; ++j) {
            const unsigned i = i0 + j * blockDim.x;
            if (i >= pieces) break;
            float4 x = *reinterpret_cast<const float4*>(&v[j]);
            if (normed) {
                const float4 w = *reinterpret_cast<const float4*>(&g[j]);
                squares += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
                x = make_float4(x.x * w.x, x.y * w.y, x.z * w.z, x.w * w.w);
            }
            (i % 2 == 0 ? x_lo : x_hi)[i / 2] = x;
        }
    }
    __shared__ float warp_squares[kWarps];
    const unsigned warps = blockDim.x / qrt::kWarp;
    if (normed) {
        squares = qrt::warp_sum(squares);
        if (threadIdx.x % qrt::kWarp == 0) warp_squares[threadIdx.x / qrt::kWarp] = squares;
    }
    __syncthreads();
    if (!normed) return 1.f;
    float total = 0.f;
    for (unsigned i = 0; i < warps; ++i) total += warp_squares[i];
    return 1.f / sqrtf(total / static_cast<float>(k) + args.eps);
}

// GROUP: 16-byte chunks per lane and row loaded at once. LEAN: a warp takes one row (gated:
// one gate/up pair) at a time and never shares it, so that few registers are live and four
// blocks fit on a multiprocessor; the next kernel is then let in as soon as x is ready, its
// blocks find room beside this kernel's and issue their weight loads while it finishes.
//
// HALVES > 0 (plain kernels for k = HALVES * 2048): a warp takes one row, streamed as HALVES
// groups of 8 chunks per lane through two register sets in turn: while one group is
// multiplied the next two are in flight, so the loads of a long row never drain between
// groups. The loop over the groups is unrolled at compile time: no branch for ptxas to wait
// at.
template <typename W, bool GATED, int GROUP, bool LEAN, int HALVES = 0>
__device__ __forceinline__ void gemv_one(const qrt_gemv_args& args) {
    static_assert(HALVES == 0 || (!GATED && GROUP == 8), "streamed rows: plain kernels only");
    constexpr bool kStream = HALVES > 0;
    constexpr int kGroup = GROUP;
    extern __shared__ float4 staged[];
    // (A streamed row's length is known at compile time: the launcher checks k.)
    const unsigned k = kStream ? HALVES * 2048 : args.k;
    const unsigned chunks = k / 8;
    float4* x_lo = staged;           // x[8c .. 8c + 4) of chunk c
    float4* x_hi = staged + chunks;  // x[8c + 4 .. 8c + 8)
    const unsigned lane = threadIdx.x % qrt::kWarp;
    const unsigned warp = threadIdx.x / qrt::kWarp;
    const unsigned warps = blockDim.x / qrt::kWarp;
    const unsigned stride = gridDim.x * warps;

    unsigned rows = args.seg[0].n;
    if (!GATED) {
#pragma unroll
        for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i)
            rows += i < args.num_segments ? args.seg[i].n : 0;
    }
    // Pair p: rows 2p and 2p + 1, or (gated) row p of gate and of up. With fewer rows than
    // twice the warps of the grid, a "pair" is one row whose chunks the two halves of a group
    // share (`single`), so that every warp has work; a lean warp takes a row of its own.
    const bool single = !GATED && (LEAN || kStream || rows < 2 * stride);
    const unsigned pairs = GATED || single ? rows : (rows + 1) / 2;
    const unsigned per_lane = (chunks + qrt::kWarp - 1) / qrt::kWarp;
    // Chunk slots a group covers, and where its second half starts.
    const unsigned group_slots = single && !LEAN ? 2 * kGroup : kGroup;
    const unsigned b_offset = single ? kGroup : 0;

    // The weights of both rows of pair p (the second is null past the last row).
    auto pair_weights = [&](unsigned p, const uint4*& w0, const uint4*& w1) {
        const unsigned r0 = GATED || single ? p : 2 * p;
        const RowRef a = find_row<GATED>(args, r0);
        w0 = reinterpret_cast<const uint4*>(reinterpret_cast<const W*>(a.seg.w) +
                                            static_cast<size_t>(a.row) * k);
        if (single) {
            w1 = w0;
        } else if (GATED) {
            w1 = reinterpret_cast<const uint4*>(reinterpret_cast<const W*>(args.seg[1].w) +
                                                static_cast<size_t>(a.row) * k);
        } else {
            const RowRef b = find_row<GATED>(args, min(r0 + 1, rows - 1));
            w1 = r0 + 1 < rows ? reinterpret_cast<const uint4*>(
                                     reinterpret_cast<const W*>(b.seg.w) +
                                     static_cast<size_t>(b.row) * k)
                               : nullptr;
        }
    };
    // Chunk slot j of a lane: its chunk, clamped into the row for reading x, and whether it
    // is in the row.
    auto slot = [&](unsigned j, unsigned& chunk, unsigned& at) {
        chunk = lane + j * qrt::kWarp;
        at = min(chunk, chunks - 1);
        return j < per_lane && chunk < chunks;
    };
    // Loads the group of chunk slots starting at j0 of both rows: predicated, no branch.
    auto load_group = [&](const uint4* w0, const uint4* w1, unsigned j0, uint4 (&a)[kGroup],
                          uint4 (&b)[kGroup]) {
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
            unsigned chunk, at;
            const bool in_a = slot(j0 + u, chunk, at);
            qrt::load_stream_if(a[u], w0 + chunk, in_a);
            if (GATED || !LEAN) {
                const bool in_b = slot(j0 + b_offset + u, chunk, at);
                qrt::load_stream_if(b[u], w1 + chunk, in_b && w1 != nullptr);
            }
        }
    };

    // Streamed rows: one group of 8 chunk slots per lane, starting at slot j0, into `r`, and
    // its products with x into acc.
    auto load_half = [&](const uint4* w, unsigned j0, uint4 (&r)[kGroup]) {
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
            unsigned chunk, at;
            const bool in = slot(j0 + u, chunk, at);
            qrt::load_stream_if(r[u], w + chunk, in);
        }
    };
    auto dot_half = [&](const uint4 (&r)[kGroup], unsigned j0, float& acc) {
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
            unsigned chunk, at;
            const bool in = slot(j0 + u, chunk, at);
            const float s = qrt::dot8<W>(r[u], x_lo[at], x_hi[at], acc);
            acc = in ? s : acc;
        }
    };
    // The first loads of a pair (streamed: the first two groups of its row).
    auto load_first = [&](const uint4* w0, const uint4* w1, uint4 (&a)[kGroup],
                          uint4 (&b)[kGroup]) {
        if (kStream) {
            load_half(w0, 0, a);
            if (HALVES > 1) load_half(w0, kGroup, b);
        } else {
            load_group(w0, w1, 0, a, b);
        }
    };

    unsigned p = blockIdx.x * warps + warp;
    const uint4 *w0 = nullptr, *w1 = nullptr;
    uint4 a[kGroup], b[kGroup];
    if (p < pairs) {
        pair_weights(p, w0, w1);
        load_first(w0, w1, a, b);
    }

    // Stage x (times the norm weights) in shared memory; sum its squares for the norm. A lean
    // kernel lets the next one in as soon as its input is ready: the next kernel's weights then
    // stream while this one stages x and computes (later, after staging, the decode step was
    // 1.5-3% slower at batch one on an H200).
    qrt::pdl_wait();
    if (LEAN) qrt::pdl_launch_dependents();
    // (Lean kernels, whose rows are short, hold two pieces, the gated ones one: their 64
    // registers hold no more; with two the gated kernels spilled 48 bytes.)
    const float scale = stage_input<LEAN ? (GATED ? 1 : 2) : 4>(args, k, x_lo, x_hi);

    for (; p < pairs; p += stride) {
        float acc0 = 0.f, acc1 = 0.f;
        if (kStream) {
            // Group h is in a (h even) or b (h odd); its set is refilled with group h + 2.
#pragma unroll
            for (int h = 0; h < HALVES; h += 2) {
                dot_half(a, h * kGroup, acc0);
                if (h + 2 < HALVES) load_half(w0, (h + 2) * kGroup, a);
                if (h + 1 < HALVES) {
                    dot_half(b, (h + 1) * kGroup, acc1);
                    if (h + 3 < HALVES) load_half(w0, (h + 3) * kGroup, b);
                }
            }
        }
        for (unsigned j0 = 0; !kStream && j0 < per_lane; j0 += group_slots) {
            if (j0 > 0) load_group(w0, w1, j0, a, b);
            // Lanes past the end of the row read a valid x and drop the product.
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                unsigned chunk, at;
                const bool in_a = slot(j0 + u, chunk, at);
                const float s0 = qrt::dot8<W>(a[u], x_lo[at], x_hi[at], acc0);
                acc0 = in_a ? s0 : acc0;
                if (GATED || !LEAN) {
                    const bool in_b = slot(j0 + b_offset + u, chunk, at);
                    const float s1 = qrt::dot8<W>(b[u], x_lo[at], x_hi[at], acc1);
                    acc1 = in_b ? s1 : acc1;
                }
            }
        }
        if (single) {
            acc0 += acc1;
            acc1 = 0.f;
        }
        const float sum0 = qrt::warp_sum(acc0) * scale;
        const float sum1 = qrt::warp_sum(acc1) * scale;
        // The next pair's first loads go out before this pair's results are written.
        const unsigned done = p;
        const bool second = !single && (GATED || w1 != nullptr);
        if (p + stride < pairs) {
            pair_weights(p + stride, w0, w1);
            load_first(w0, w1, a, b);
        }
        if (lane == 0) {
            if (GATED) {
                store<GATED>(args, done, qrt::swiglu(sum0, sum1));
            } else {
                const unsigned row = single ? done : 2 * done;
                store<GATED>(args, row, sum0);
                if (second) store<GATED>(args, row + 1, sum1);
            }
        }
    }
    // Only now let the next kernel start: earlier, its blocks would take bandwidth and room
    // on the multiprocessors for loads it cannot use until this kernel is done.
    if (!LEAN) qrt::pdl_launch_dependents();
}

// Plain rows of k = GROUPS * 2048 of one matrix and an input that is not normalised (the Llama
// down projections: GROUPS 4 for the 1B, 7 for the 8B), in blocks of 8 rows. A block's 8
// rows are 8 * GROUPS units of 2048 values (4 KB of 16-bit weights), in memory order; at step
// t = 0 .. GROUPS - 1 warp w reads unit 8t + w, so that the block's loads at a step cover 32 KB
// in a row of the matrix. A warp per row, as gemv_one streams it, has the block's loads at a
// step in 8 pieces of 8 KB, 16 KB apart: on an H200 the 1B's down took 10.7 us that way and
// 9.3 tiled (RESULTS logs 48, 49). As in gemv_one, the first two steps are loaded before the
// grid-dependency wait and a set of registers is refilled with step t + 2 while step t + 1 is
// multiplied; a unit's sum is reduced across the warp only after the last step (reduced at
// each step, the 1B's down took 10.5 us, log 49). The sums of a row's units meet in shared
// memory, added in the row's order by whichever warp arrives last, and each warp lets the
// next kernel in at its end: a barrier of the block there instead slowed the 1B's decode step.
template <typename W, int GROUPS>
__device__ __forceinline__ void gemv_one_tiled(const qrt_gemv_args& args) {
    constexpr unsigned kGroup = 8;                   // 16-byte chunks per lane: a unit
    constexpr unsigned kUnit = kGroup * qrt::kWarp;  // chunks of a unit
    constexpr unsigned k = GROUPS * kUnit * 8;
    extern __shared__ float4 staged[];
    float4* x_lo = staged;
    float4* x_hi = staged + k / 8;
    const unsigned lane = threadIdx.x % qrt::kWarp;
    const unsigned warp = threadIdx.x / qrt::kWarp;

    // Loads this warp's unit of step t of row block c. A row past the last loads the last (its
    // sum is not stored): with a predicate instead, ptxas spilled the loop's registers.
    auto load = [&](unsigned c, unsigned t, uint4 (&r)[kGroup]) {
        const unsigned unit = kWarps * t + warp;
        const unsigned row = min(8 * c + unit / GROUPS, args.seg[0].n - 1);
        const uint4* w = reinterpret_cast<const uint4*>(reinterpret_cast<const W*>(args.seg[0].w) +
                                                        static_cast<size_t>(row) * k) +
                         (unit % GROUPS) * kUnit + lane;
#pragma unroll
        for (unsigned u = 0; u < kGroup; ++u) qrt::load_stream_if(r[u], w + u * qrt::kWarp, true);
    };
    auto dot = [&](unsigned t, const uint4 (&r)[kGroup], float& acc) {
        const unsigned first = ((kWarps * t + warp) % GROUPS) * kUnit + lane;
#pragma unroll
        for (unsigned u = 0; u < kGroup; ++u) {
            const unsigned c = first + u * qrt::kWarp;
            acc = qrt::dot8<W>(r[u], x_lo[c], x_hi[c], acc);
        }
    };

    // The units' sums (step, warp), and how many of each row's have arrived (counted on across
    // row blocks: the GROUPS-th of a row block is the last).
    __shared__ float sums[GROUPS][kWarps];
    __shared__ unsigned arrived[8];

    // Multiplies row block c (its first two steps already loaded into a and b) and adds the
    // sums of its rows; the last warp of a row stores it.
    uint4 a[kGroup], b[kGroup];
    auto multiply = [&](unsigned c) {
        float acc[GROUPS];
#pragma unroll
        for (int t = 0; t < GROUPS; ++t) {
            uint4(&r)[kGroup] = t % 2 == 0 ? a : b;
            acc[t] = 0.f;
            dot(t, r, acc[t]);
            if (t + 2 < GROUPS) load(c, t + 2, r);
        }
#pragma unroll
        for (int t = 0; t < GROUPS; ++t) {
            const float sum = qrt::warp_sum(acc[t]);
            if (lane == 0) sums[t][warp] = sum;
        }
        __syncwarp();
        if (lane < GROUPS) {
            // Lane t: the unit of step t; the last of its row's units adds them in order.
            const unsigned row = (kWarps * lane + warp) / GROUPS;
            __threadfence_block();
            if (atomicAdd(&arrived[row], 1u) % GROUPS == GROUPS - 1) {
                __threadfence_block();
                const volatile float* flat = &sums[0][0];  // by unit: step * kWarps + warp
                float v = 0.f;
                for (unsigned g = 0; g < GROUPS; ++g) v += flat[row * GROUPS + g];
                if (8 * c + row < args.seg[0].n)
                    qrt::store_gemv_row<true>(args, args.seg[0], 0, 8 * c + row, v);
            }
        }
    };

    // (Set before the wait, ordered by the staging's barrier. The 4-group kernel this one
    // replaced set them after the wait and made the 1B's decode step 0.4% longer, log 49; how
    // much of that is this order was not measured apart.)
    if (threadIdx.x < 8) arrived[threadIdx.x] = 0;
    // (The launcher gives no block past the last row block, but the branch matters: without
    // it ptxas put the grid-dependency wait ahead of these loads (SASS), which forfeits their
    // overlap with the previous kernel; that build's 1B decode step took 0.798 ms, 0.776 with
    // the branch. kernels/tests/pipeline.rs checks the order.)
    const unsigned row_blocks = (args.seg[0].n + 7) / 8;
    if (blockIdx.x < row_blocks) {
        load(blockIdx.x, 0, a);
        load(blockIdx.x, 1, b);
    }
    qrt::pdl_wait();
    stage_input<4, false>(args, k, x_lo, x_hi);
    multiply(blockIdx.x);
    // More row blocks than the grid holds (the 8B's down): in turn, each after every warp has
    // read the sums of the one before. (ptxas spills up to 28 bytes for it: a few local loads
    // a pass.)
    for (unsigned c = blockIdx.x + gridDim.x; c < row_blocks; c += gridDim.x) {
        __syncthreads();
        load(c, 0, a);
        load(c, 1, b);
        multiply(c);
    }
    qrt::pdl_launch_dependents();
}

}  // namespace

// Rows of k = HALVES * 2048 streamed through two register sets.
#define QRT_GEMV_ONE_STREAM(NAME, W, HALVES)                                                \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_stream##HALVES##_##NAME(const qrt_gemv_args args) {                    \
        gemv_one<W, false, 8, false, HALVES>(args);                                         \
    }

// Rows of k = GROUPS * 2048 of one matrix, tiled.
#define QRT_GEMV_ONE_TILED(NAME, W, GROUPS)                                                 \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_tiled##GROUPS##_##NAME(const qrt_gemv_args args) {                     \
        gemv_one_tiled<W, GROUPS>(args);                                                    \
    }

// The plain kernels are for long rows (the launcher sends k <= 4096, gated k <= 2048, to the
// lean ones); every kernel takes any k that is a multiple of 8.
#define QRT_GEMV_ONE(NAME, W)                                                               \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_##NAME(const qrt_gemv_args args) {                                     \
        gemv_one<W, false, 8, false>(args);                                                 \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_gated_##NAME(const qrt_gemv_args args) {                               \
        gemv_one<W, true, 8, false>(args);                                                  \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 4)                    \
        qrt_gemv_one_lean_##NAME(const qrt_gemv_args args) {                                \
        gemv_one<W, false, 8, true>(args);                                                  \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 4)                    \
        qrt_gemv_one_lean_gated_##NAME(const qrt_gemv_args args) {                          \
        gemv_one<W, true, 4, true>(args);                                                   \
    }                                                                                       \
    QRT_GEMV_ONE_TILED(NAME, W, 3)                                                          \
    QRT_GEMV_ONE_TILED(NAME, W, 4)                                                          \
    QRT_GEMV_ONE_TILED(NAME, W, 5)                                                          \
    QRT_GEMV_ONE_TILED(NAME, W, 6)                                                          \
    QRT_GEMV_ONE_TILED(NAME, W, 7)                                                          \
    QRT_GEMV_ONE_STREAM(NAME, W, 3)                                                         \
    QRT_GEMV_ONE_STREAM(NAME, W, 4)                                                         \
    QRT_GEMV_ONE_STREAM(NAME, W, 5)                                                         \
    QRT_GEMV_ONE_STREAM(NAME, W, 6)                                                         \
    QRT_GEMV_ONE_STREAM(NAME, W, 7)

QRT_GEMV_ONE(f16, __half)
QRT_GEMV_ONE(bf16, __nv_bfloat16)
