// Batched GEMV on the tensor cores, for decode steps of 2 to 16 sequences:
// y[b, i] = sum_j x[b, j] * w[i, j] (+ bias[i]), weights f16 or bf16, activations rounded to the
// weight type (as the prefill GEMM does), f32 accumulation.
//
// With the FMA kernel (gemv.cu) a batch of 8 costs eight multiply-adds per weight, which makes a
// decode step of 8 sequences twice as slow as one of 1; here `mma.sync.m16n8k16` takes 16 weight
// rows against the 8 batch columns at once, so the weights stream at the same speed whatever
// the batch. Each lane loads its weights straight from global memory in 16-byte pieces: lane l
// reads 8 consecutive k of rows l/4 and l/4 + 8. That is not the k order of an mma fragment,
// but a dot product may sum its k in any order as long as weights and activations use the same
// one, so the activations are loaded in that same permuted order. Batches of 9 to 16 (the
// `_c16` kernels) swap the operands: x is the A operand (batch rows r and r + 8), and the same
// weight loads are the B operands of two products, the tile's rows 0-7 and 8-15, so that 16
// batch rows cost the same weight registers and accumulators as 8.
//
// Who does what. A block holds P 16-row tiles at a time (a tile group; P = 1 or kWarps, fixed
// at compile time so that every load address is cheap), kWarps / P warps on each, which split
// the block's steps of k between them; it stages its slice of x once in
// shared memory, rounded to 16 bits, for all P tiles. A cluster of S blocks along z splits
// k: block z multiplies steps [z * steps / S, (z + 1) * steps / S) of the group's tiles. The
// S <= P blocks of a cluster split a group's tiles between them for the sums: each warp stores
// its partial tile into the shared memory of the block that owns the tile (distributed shared
// memory: stores, which do not wait), one cluster barrier, and each owner adds its tiles from
// its own shared memory in rank order, so the sum does not depend on timing. (Pulling the
// partial tiles instead took two cluster barriers and a wait for each remote read.) x is so
// read from L2 once per tile group and slice rather than once per tile: at batch 8, x of a
// long row is as large as a tile's weights, and reading it per tile doubled what a
// multiprocessor read. Blocks walk the tile groups blockIdx.x, + gridDim.x, ... (the launcher
// counts at most one wave).
//
// A warp's loads: groups of kUnroll steps of 32 k in two register sets that take turns. While
// the group in one set is multiplied the other set's loads are in flight, and a set is refilled
// with the next group (of the next tile group, after the last) as soon as it has been used, so
// a warp always has one or two groups outstanding and no register is ever copied (a copy
// would wait for its load). The first two groups are requested before the wait for the
// previous kernel.
//
// A normalised input is staged times the norm weights only, the squares of each row summed on
// the way; its 1/rms scales the finished sums (after the cluster's slices are added), so the
// norm costs no pass of its own. (The staged x * g must then fit the weight type's range, as
// every activation the tensor-core path rounds.)

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

// Eight f32 values (a, then b) rounded to W: a step's mma fragment of x (B for 8 columns,
// half of A's for 16).
template <typename W>
__device__ __forceinline__ uint4 pack8(const float4& a, const float4& b) {
    return make_uint4(pack2<W>(a.x, a.y), pack2<W>(a.z, a.w), pack2<W>(b.x, b.y),
                      pack2<W>(b.z, b.w));
}

// Most decode partitions a merging GEMV requests at once (with 5, or with more folded into a
// running maximum in later groups, its kernels spilled 32 bytes or more); more (up to
// `MAX_MERGED_PARTITIONS` in launch/gemv.rs) go their maximum first, then two at a time.
constexpr unsigned kMaxMerged = 4;

// Where a merging GEMV finds the partitions of one (row, head) and which 8 of its values it
// wants (see merged_chunk).
struct MergedHead {
    const float* acc;     // the partitions' unnormalised outputs, head_dim each
    const float* maxima;  // their maxima
    const float* sums;    // their sums
    size_t hb;            // the (row, head)'s first partition
    unsigned d;           // the first of the 8 dimensions
    unsigned head_dim;
    unsigned splits;
};

// Partitions s0 .. s0 + G - 1 of a head (zeros and -inf past `splits`), every load requested
// before any is used.
template <unsigned G>
struct PartitionGroup {
    float m[G], l[G];
    uint4 part[G][2];

    __device__ __forceinline__ PartitionGroup(const MergedHead& h, unsigned s0) {
#pragma unroll
        for (unsigned j = 0; j < G; ++j) {
            const unsigned s = s0 + j;
            const bool in = s < h.splits;
            m[j] = in ? __ldcg(h.maxima + h.hb + s) : -INFINITY;
            l[j] = in ? __ldcg(h.sums + h.hb + s) : 0.f;
            part[j][0] = part[j][1] = make_uint4(0, 0, 0, 0);
            const float* at = h.acc + (h.hb + min(s, h.splits - 1)) * h.head_dim + h.d;
            qrt::load_cg_if(part[j][0], at, in);
            qrt::load_cg_if(part[j][1], at + 4, in);
        }
    }

    // The group's outputs and sums added, rescaled to the common maximum `top`. A partition
    // whose maximum is -inf (beyond its sequence's context) has no weight, whatever its stale
    // outputs hold.
    __device__ __forceinline__ void add_to(float top, float& total, float (&o)[8]) const {
#pragma unroll
        for (unsigned j = 0; j < G; ++j) {
            if (m[j] == -INFINITY) continue;
            const float w = expf(m[j] - top);
            total = fmaf(l[j], w, total);
            const float* v = reinterpret_cast<const float*>(part[j]);
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] = fmaf(v[i], w, o[i]);
        }
    }
};

// Values 8c .. 8c + 7 of input row b of a merging GEMV (`merge` = head_dim << 8 | partitions):
// the partitions a deferred decode attention left in its work area (`x`; attention.cu's
// `Partials`, indexed by query row, `batch` rows) for that head, rescaled to their common
// maximum and combined as the attention's own merge does (the first partition of a sequence
// always holds tokens, so the common maximum is finite and the total at least 1). Up to
// kMaxMerged partitions come in one group; more, their maxima first, then their outputs two
// at a time.
__device__ __forceinline__ void merged_chunk(const qrt_gemv_args& args, unsigned batch,
                                             unsigned merge, unsigned b, unsigned c,
                                             float4& lo, float4& hi) {
    MergedHead h;
    h.head_dim = merge >> 8;
    h.splits = merge & 0xff;
    const unsigned heads = args.k / h.head_dim;
    const size_t n = static_cast<size_t>(batch) * heads * h.splits;
    h.acc = reinterpret_cast<const float*>(args.x);
    h.maxima = h.acc + n * h.head_dim;
    h.sums = h.maxima + n;
    h.hb = (static_cast<size_t>(b) * heads + c * 8 / h.head_dim) * h.splits;
    h.d = c * 8 % h.head_dim;
    // The combined output over its total: the staged values.
    auto normalized = [&](const float(&o)[8], float total) {
        const float inv = 1.f / total;
        lo = make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
        hi = make_float4(o[4] * inv, o[5] * inv, o[6] * inv, o[7] * inv);
    };
    if (h.splits > kMaxMerged) {
        float top = -INFINITY;
        for (unsigned s = 0; s < h.splits; ++s) top = fmaxf(top, __ldcg(h.maxima + h.hb + s));
        float total = 0.f;
        float o[8] = {};
        for (unsigned s0 = 0; s0 < h.splits; s0 += 2) PartitionGroup<2>(h, s0).add_to(top, total, o);
        normalized(o, total);
        return;
    }
    const PartitionGroup<kMaxMerged> g(h, 0);
    float top = g.m[0];
#pragma unroll
    for (unsigned s = 1; s < kMaxMerged; ++s) top = fmaxf(top, g.m[s]);
    float total = 0.f;
    float o[8] = {};
    g.add_to(top, total, o);
    normalized(o, total);
}

// A 16-row tile: its segment, first output row, and the rows `lo` and `hi` of a lane's
// fragment.
struct TileRows {
    qrt_gemv_segment seg;
    unsigned row0;
    const uint4* lo;
    const uint4* hi;
};

// GATED: two segments, gate and up, of the same shape; the tile's rows 0-7 are 8 rows of gate and
// rows 8-15 the same rows of up, so that each lane ends up holding gate and up sums of the same
// (row, batch) and writes silu(gate) * up into the gate segment's `y`.
// What a tensor-core GEMV's `x` holds: f32 rows; a deferred decode attention's partitions
// (`merge`, see merged_chunk), combined as they are staged; or rows already rounded to W (the
// 16-bit output of a gated GEMV), staged as they are.
enum class Input { F32, Merge, Half16 };

// IN: the input's form. Y16 (gated only): silu(gate) * up is stored rounded to W, `[batch, n]`
// at the gate segment's `y`, for a product that takes Input::Half16.
template <typename W, int kWarps, bool GATED, unsigned kPerBlock, Input IN, bool Y16,
          unsigned kCols>
__device__ __forceinline__ void gemv_tc(const qrt_gemv_args& args, unsigned batch,
                                        unsigned tiles, unsigned early, unsigned merge) {
    constexpr unsigned per_block = kPerBlock;
    constexpr unsigned kOutRows = GATED ? 8 : 16;
    const unsigned k = args.k;
    const unsigned steps = k / 32;
    const unsigned warp = threadIdx.x / 32;
    const unsigned lane = threadIdx.x % 32;
    const unsigned r = lane / 4;  // fragment row, and batch column (16 columns: batch row)
    const unsigned q = lane % 4;  // which 8 of the 32 k of a step
    constexpr unsigned per_tile = kWarps / per_block;  // warps on a tile
    const unsigned slot = warp / per_tile;         // this warp's tile of the group
    const unsigned part_of = warp % per_tile;      // and its share of the steps

    unsigned split = 1, rank = 0;
#if __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    split = cluster.num_blocks();
    rank = cluster.block_rank();
    // Every thread arrives at once; each waits before its first store into another block's
    // shared memory (by then all blocks of the cluster have long started).
    if (split > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
    // (Only tile groups split, over at most as many blocks as tiles: the launcher's plans.)
    if (split > kPerBlock) __trap();
    // `p` in the shared memory of block z of the cluster (without a cluster, this block's).
    auto in_block = [&](auto* p, unsigned z) {
#if __CUDA_ARCH__ >= 900
        if (split > 1) return cluster.map_shared_rank(p, z);
#endif
        return p;
    };
    // This block's slice of k; a warp takes its steps part_of, + per_tile, ... of the slice.
    // The groups a warp walks per tile are the same in every warp and block of the cluster, so
    // that all reach the barriers equally often.
    const unsigned s0 = rank * steps / split;
    const unsigned slice = (rank + 1) * steps / split - s0;
    const unsigned warp_steps = ((steps + split - 1) / split + per_tile - 1) / per_tile;
    const unsigned groups = (warp_steps + kUnroll - 1) / kUnroll;
    const unsigned tile_groups = (tiles + per_block - 1) / per_block;
    const unsigned walker = blockIdx.x, walkers = gridDim.x;
    const unsigned items =
        walker < tile_groups ? ((tile_groups - 1 - walker) / walkers + 1) * groups : 0;
    // Step u of group g of this warp, within the slice (past it: no step).
    auto slice_step = [&](unsigned g, unsigned u) { return (g * kUnroll + u) * per_tile + part_of; };

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

    // The next group to request: group load_group of this warp's tile in tile group load_tg.
    unsigned load_tg = walker, load_group = 0;
    TileRows loading = tile_rows(min(walker * per_block + slot, tiles - 1));
    auto load_next = [&](uint4 (&lo)[kUnroll], uint4 (&hi)[kUnroll]) {
        const bool live = load_tg < tile_groups && load_tg * per_block + slot < tiles;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const unsigned step = slice_step(load_group, u);
            const bool in = live && step < slice;
            const unsigned c = (s0 + min(step, slice - 1)) * 4 + q;  // 16-byte chunk of the row
            qrt::load_stream_if(lo[u], loading.lo + c, in);
            qrt::load_stream_if(hi[u], loading.hi + c, in);
        }
        if (++load_group == groups) {
            load_group = 0;
            load_tg += walkers;
            loading = tile_rows(min(load_tg * per_block + slot, tiles - 1));
        }
    };
    uint4 lo_a[kUnroll] = {}, hi_a[kUnroll] = {}, lo_b[kUnroll] = {}, hi_b[kUnroll] = {};
    load_next(lo_a, hi_a);
    load_next(lo_b, hi_b);
    // The first weights are on their way; now wait for x. A large product (`early`, see
    // common.cuh) lets the next kernel in first, so that its launch and its first loads
    // overlap this one's wait.
    if (early) qrt::pdl_launch_dependents();
    qrt::pdl_wait();
    if (!early) qrt::pdl_launch_dependents();

    // x of batch row b, chunk c of the slice (8 values) as 16-bit pairs: a step's mma
    // fragments of x. Rows 64 bytes apart beyond their length: where a slice's steps are even
    // in number, the two rows a quarter warp reads (lanes r, q and r + 1, q) fall in different
    // banks.
    extern __shared__ uint4 x16[];
    const unsigned share = slice * 4;  // chunks of the slice
    const unsigned row_chunks = share + 4;
    const unsigned c0 = s0 * 4;
    const bool normed = args.norm != 0;
    const float4* g4 = reinterpret_cast<const float4*>(args.norm);
    // (`squares` and `part` are the block's static shared memory: tc_static_shared in
    // launch/gemv_plan.rs counts them.) squares[z][b]: the sum of squares of row b over block
    // z's slice.
    __shared__ float squares[QRT_GEMV_MAX_SPLIT][kCols];
    static_assert(kCols == 8 || kCols == 16, "8 or 16 batch columns");
    static_assert(2 * kWarps >= kCols, "a warp stages at most two rows");
    // Warp w stages row w (and row w + kWarps where the columns outnumber the warps), four
    // chunks a lane requested before any is converted, and sums its squares.
    auto stage_row = [&](const unsigned b) -> float {
        if (IN == Input::Merge) {
            for (unsigned i = lane; i < share; i += 32) {
                float4 a, d;
                merged_chunk(args, batch, merge, b, c0 + i, a, d);
                x16[b * row_chunks + i] = pack8<W>(a, d);
            }
            return 0.f;
        } else if (IN == Input::Half16) {
            // Warp b copies row b, four chunks a lane requested at once.
            const uint4* xb =
                reinterpret_cast<const uint4*>(args.x) + static_cast<size_t>(b) * (k / 8);
            constexpr int kAhead = 4;
            for (unsigned i0 = lane; i0 < share; i0 += kAhead * 32) {
                uint4 v[kAhead];
#pragma unroll
                for (int j = 0; j < kAhead; ++j) {
                    const unsigned i = i0 + j * 32;
                    v[j] = make_uint4(0, 0, 0, 0);
                    qrt::load_cg_if(v[j], xb + c0 + min(i, share - 1), i < share);
                }
#pragma unroll
                for (int j = 0; j < kAhead; ++j) {
                    const unsigned i = i0 + j * 32;
                    if (i < share) x16[b * row_chunks + i] = v[j];
                }
            }
            return 0.f;
        } else {
            const float4* xb =
                reinterpret_cast<const float4*>(args.x) + static_cast<size_t>(b) * (k / 4);
            float sum = 0.f;
            constexpr int kAhead = 4;
            for (unsigned i0 = lane; i0 < share; i0 += kAhead * 32) {
                uint4 v[kAhead][2];
#pragma unroll
                for (int j = 0; j < kAhead; ++j) {
                    const unsigned i = i0 + j * 32;
                    const unsigned c = c0 + min(i, share - 1);
                    v[j][0] = v[j][1] = make_uint4(0, 0, 0, 0);
                    qrt::load_cg_if(v[j][0], xb + 2 * c, i < share);
                    qrt::load_cg_if(v[j][1], xb + 2 * c + 1, i < share);
                }
                // No branch among these chunks, so that their norm weights are requested
                // together (with a `break` each waited for the chunk before it): chunks past the
                // slice read a valid address, add zeros and are stored into the row's padding,
                // which no product reads.
#pragma unroll
                for (int j = 0; j < kAhead; ++j) {
                    const unsigned i = i0 + j * 32;
                    const unsigned c = c0 + min(i, share - 1);
                    float4 a = *reinterpret_cast<const float4*>(&v[j][0]);
                    float4 d = *reinterpret_cast<const float4*>(&v[j][1]);
                    sum += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
                    sum += d.x * d.x + d.y * d.y + d.z * d.z + d.w * d.w;
                    if (normed) {
                        a = qrt::scaled(a, __ldg(g4 + 2 * c), 1.f);
                        d = qrt::scaled(d, __ldg(g4 + 2 * c + 1), 1.f);
                    }
                    x16[b * row_chunks + min(i, share)] = pack8<W>(a, d);
                }
            }
            return qrt::warp_sum(sum);
        }
    };
    const float row_squares = warp < batch ? stage_row(warp) : 0.f;
    const float row_squares2 =
        kCols > kWarps && warp + kWarps < batch ? stage_row(warp + kWarps) : 0.f;
    __syncthreads();
#if __CUDA_ARCH__ >= 900
    if (split > 1) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
    // Block z's squares go to every block of the cluster, which add them in rank order.
    if (normed && lane == 0 && warp < batch) {
        for (unsigned z = 0; z < split; ++z) in_block(squares, z)[rank][warp] = row_squares;
    }
    if (kCols > kWarps && normed && lane == 0 && warp + kWarps < batch) {
        for (unsigned z = 0; z < split; ++z)
            in_block(squares, z)[rank][warp + kWarps] = row_squares2;
    }

    const bool has_x = r < batch;
    // 8 columns: two independent mma chains, the weights the A operand (rows r, r + 8 of the
    // tile) and x the B operand (column r). 16 columns: x the A operand (rows r, r + 8 of the
    // batch) against the weights as two B operands (the tile's rows 0-7, then 8-15: each its
    // own chain), so the accumulators are [rows 0-7 | 8-15][4].
    float acc[2][4] = {};
    const bool has_x2 = r + 8 < batch;
    // Group g of this warp's steps in lo, hi: its x is read for all steps before the first
    // product (predicated, no branch between a load and its use).
    auto multiply = [&](const uint4 (&lo)[kUnroll], const uint4 (&hi)[kUnroll], unsigned g) {
        uint4 xf[kUnroll], xf2[kUnroll];  // batch rows r and (16 columns) r + 8
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const unsigned step = slice_step(g, u);
            const uint4* at = x16 + r * row_chunks + min(step, slice - 1) * 4 + q;
            // Batch columns past the batch and steps past the slice: zeros.
            xf[u] = qrt::load_shared_or_zero(at, has_x && step < slice);
            if (kCols == 16)
                xf2[u] = qrt::load_shared_or_zero(at + 8 * row_chunks, has_x2 && step < slice);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            if (slice_step(g, u) >= slice) break;
            if (kCols == 16) {
                const uint4& a = xf[u];
                const uint4& b = xf2[u];
                qrt::mma16816<W>(acc[0], a.x, b.x, a.y, b.y, lo[u].x, lo[u].y);
                qrt::mma16816<W>(acc[1], a.x, b.x, a.y, b.y, hi[u].x, hi[u].y);
                qrt::mma16816<W>(acc[0], a.z, b.z, a.w, b.w, lo[u].z, lo[u].w);
                qrt::mma16816<W>(acc[1], a.z, b.z, a.w, b.w, hi[u].z, hi[u].w);
            } else {
                qrt::mma16816<W>(acc[u % 2], lo[u].x, hi[u].x, lo[u].y, hi[u].y, xf[u].x,
                                 xf[u].y);
                qrt::mma16816<W>(acc[u % 2], lo[u].z, hi[u].z, lo[u].w, hi[u].w, xf[u].z,
                                 xf[u].w);
            }
        }
    };

    // A normalised row's 1/rms, from the squares of every block of the cluster (in rank order).
    auto row_scale = [&](unsigned b) {
        if (!normed) return 1.f;
        float total = 0.f;
        for (unsigned z = 0; z < split; ++z) total += squares[z][b];
        return 1.f / sqrtf(total / static_cast<float>(k) + args.eps);
    };
    // Output (m, b) of tile t, its gate and up (or plain) sums given: scaled and stored.
    auto store = [&](const TileRows& tr, unsigned m, unsigned b, float sum, float up) {
        const float scale = row_scale(b);
        if (GATED && Y16)
            reinterpret_cast<W*>(tr.seg.y)[static_cast<size_t>(b) * tr.seg.n + tr.row0 + m] =
                qrt::Half16<W>::from_float(qrt::swiglu(sum * scale, up * scale));
        else if (GATED)
            qrt::store_gemv_row<false>(args, tr.seg, b, tr.row0 + m,
                                       qrt::swiglu(sum * scale, up * scale));
        else
            qrt::store_gemv_row<true>(args, tr.seg, b, tr.row0 + m, sum * scale);
    };

    // The partial tiles: slot (j * split + z) * per_tile + p holds the sums of warp p of the
    // warps on this block's j-th owned tile (tiles rank, rank + split, ... of the group) over
    // block z's slice of k, [row][batch column]. Each warp sends its sums to the owner of its
    // tile; after one barrier the owners add them from their own shared memory. (Two sets
    // used in turn spare blocks that walk several tile groups their second barrier: H200
    // decode steps at batch 8, one set -> two, 1B 1.050 -> 1.046 ms, SmolLM2 0.645 -> 0.638,
    // but the 8B 5.49 -> 5.65.)
    __shared__ float part[kWarps][16][kCols];
    // Every block's sums have reached their owners (and their squares every block); or, after
    // the owners have added them, the slots are free again.
    auto all_sent = [&]() {
#if __CUDA_ARCH__ >= 900
        if (split > 1) {
            cluster.sync();
            return;
        }
#endif
        __syncthreads();
    };
    // After the last group of the block's `round`-th tile group: this warp's sums (rows r,
    // r + 8 of batch columns 2q, 2q + 1 in acc; 16 columns: batch rows r, r + 8 of tile rows
    // 2q, 2q + 1 and 8 + 2q, 9 + 2q) sent, then the block's own tiles added up
    // (in rank order, then warp order: the sum does not depend on timing) and stored.
    const unsigned rounds = items / groups;
    auto finish = [&](unsigned round) {
        const unsigned tg = walker + round * walkers;
        float(*sent)[16][kCols] = in_block(part, slot % split);
        const unsigned into = ((slot / split) * split + rank) * per_tile + part_of;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (kCols == 16) {
                // (batch r + 8 (e / 2), tile rows 2q + e % 2 and 8 + 2q + e % 2)
                const unsigned b = r + (e / 2) * 8, m = 2 * q + e % 2;
                sent[into][m][b] = acc[0][e];
                sent[into][m + 8][b] = acc[1][e];
            } else {
                sent[into][r + (e / 2) * 8][2 * q + e % 2] = acc[0][e] + acc[1][e];
            }
            acc[0][e] = acc[1][e] = 0.f;
        }
        all_sent();
        const float(*sums)[16][kCols] = part;
        const unsigned owned = rank < per_block ? (per_block - 1 - rank) / split + 1 : 0;
        constexpr unsigned kPerTile = kOutRows * kCols;
        for (unsigned i = threadIdx.x; i < owned * kPerTile; i += blockDim.x) {
            const unsigned j = i / kPerTile;
            const unsigned m = i % kPerTile / kCols, b = i % kCols;
            const unsigned t = tg * per_block + rank + j * split;
            if (t >= tiles || b >= batch) continue;
            const TileRows tr = tile_rows(t);
            if (tr.row0 + m >= tr.seg.n) continue;
            float sum = 0.f, up = 0.f;
            for (unsigned slot_of = j * split * per_tile; slot_of < (j + 1) * split * per_tile;
                 ++slot_of) {
                sum += sums[slot_of][m][b];
                if (GATED) up += sums[slot_of][m + 8][b];
            }
            store(tr, m, b, sum, up);
        }
        if (round + 1 < rounds) all_sent();
    };

    for (unsigned i = 0; i < items; i += 2) {
        multiply(lo_a, hi_a, i % groups);
        load_next(lo_a, hi_a);
        if (i % groups == groups - 1) finish(i / groups);
        if (i + 1 < items) {
            multiply(lo_b, hi_b, (i + 1) % groups);
            load_next(lo_b, hi_b);
            if ((i + 1) % groups == groups - 1) finish((i + 1) / groups);
        }
    }
}

}  // namespace

#define QRT_GEMV_TC_KERNEL(NAME, W, WARPS, GATED, PER_BLOCK, IN, Y16, COLS)              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 16 / WARPS)                 \
        NAME(const qrt_gemv_args args, uint32_t batch, uint32_t tiles, uint32_t early) { \
        gemv_tc<W, WARPS, GATED, PER_BLOCK, IN, Y16, COLS>(args, batch, tiles, early, 0); \
    }

// Plain and gated; a tile a block (`_t1`) or a tile a warp (`_tw`). A tile a warp also: gated
// writing 16 bits (`_tw_y16`) and plain reading them (`_tw_x16`), and plain merging a deferred
// decode attention's partitions (`_tw_merge`, with a fifth argument: the argument structs
// keep their size, since larger ones cost SmolLM2 1% at batches 2-8 on an H200, RESULTS log
// 42). COLS: the batch columns, 8 (batches of 2-8, no suffix) or 16 (9-16, `_c16`).
#define QRT_GEMV_TC(NAME, W, WARPS, COLS, SUFFIX)                                               \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_##NAME##_w##WARPS##_t1##SUFFIX, W, WARPS, false, 1,          \
                       Input::F32, false, COLS)                                                 \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_gated_##NAME##_w##WARPS##_t1##SUFFIX, W, WARPS, true, 1,     \
                       Input::F32, false, COLS)                                                 \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_##NAME##_w##WARPS##_tw##SUFFIX, W, WARPS, false, WARPS,      \
                       Input::F32, false, COLS)                                                 \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_gated_##NAME##_w##WARPS##_tw##SUFFIX, W, WARPS, true, WARPS, \
                       Input::F32, false, COLS)                                                 \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_gated_##NAME##_w##WARPS##_tw_y16##SUFFIX, W, WARPS, true,    \
                       WARPS, Input::F32, true, COLS)                                           \
    QRT_GEMV_TC_KERNEL(qrt_gemv_tc_##NAME##_w##WARPS##_tw_x16##SUFFIX, W, WARPS, false, WARPS,  \
                       Input::Half16, false, COLS)                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 16 / WARPS)                        \
        qrt_gemv_tc_##NAME##_w##WARPS##_tw_merge##SUFFIX(const qrt_gemv_args args,              \
                                                         uint32_t batch, uint32_t tiles,        \
                                                         uint32_t early, uint32_t merge) {      \
        gemv_tc<W, WARPS, false, WARPS, Input::Merge, false, COLS>(args, batch, tiles, early,   \
                                                                   merge);                      \
    }

QRT_GEMV_TC(f16, __half, 8, 8, )
QRT_GEMV_TC(f16, __half, 16, 8, )
QRT_GEMV_TC(bf16, __nv_bfloat16, 8, 8, )
QRT_GEMV_TC(bf16, __nv_bfloat16, 16, 8, )
QRT_GEMV_TC(f16, __half, 8, 16, _c16)
QRT_GEMV_TC(f16, __half, 16, 16, _c16)
QRT_GEMV_TC(bf16, __nv_bfloat16, 8, 16, _c16)
QRT_GEMV_TC(bf16, __nv_bfloat16, 16, 16, _c16)
