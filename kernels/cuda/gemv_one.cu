// GEMV for a decode step of one sequence: y[i] = sum_j x'[j] * w[i, j] (+ bias[i]) (+ y[i]),
// 16-bit weights, f32 activations and accumulation, where x' is x or its RMSNorm.
//
// At batch one a decode step is a chain of small kernels that each stream a few MB of weights,
// so what costs is latency, not arithmetic. This kernel is built to keep weight loads in flight
// from its first instruction to its last:
//   - the grid is sized to be resident at once (a few blocks per multiprocessor) and each warp
//     walks its own rows (row = warp, warp + warps in the grid, ...), so no block waits for a
//     second wave and no warp waits for another;
//   - each lane keeps a ring of kRing 16-byte weight loads in flight; the ring is filled before
//     the grid-dependency wait (weights never change), so with programmatic dependent launch
//     the loads overlap the previous kernel's tail, and every load consumed is replaced at once;
//   - after the wait, the block stages x once in shared memory (split in two halves of each
//     16-byte chunk so that the lanes' reads are contiguous), computing the sum of squares on
//     the way when the input is normalised: RMSNorm's scale 1/rms is applied to the finished
//     dot products, its weights to the staged x, so the norm needs no kernel of its own;
//   - the epilogue adds a bias, applies SwiGLU (gated: the warp reads a gate row then the same
//     row of up) or adds into y (the residual stream), so neither needs a kernel either.
// A row's work is `per_lane` 16-byte chunks per lane (k / 256, rounded up; lanes past the end
// of a row load nothing), for each of its one or two matrices.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr int kRing = 16;       // 16-byte weight loads in flight per lane
constexpr unsigned kWarps = 8;  // warps per block

template <typename W>
__device__ __forceinline__ float dot8(const uint4& w, const float4& a, const float4& b,
                                      float acc) {
    const float2 p = qrt::Half16<W>::to_float2(w.x);
    const float2 q = qrt::Half16<W>::to_float2(w.y);
    const float2 r = qrt::Half16<W>::to_float2(w.z);
    const float2 s = qrt::Half16<W>::to_float2(w.w);
    acc = fmaf(p.x, a.x, acc);
    acc = fmaf(p.y, a.y, acc);
    acc = fmaf(q.x, a.z, acc);
    acc = fmaf(q.y, a.w, acc);
    acc = fmaf(r.x, b.x, acc);
    acc = fmaf(r.y, b.y, acc);
    acc = fmaf(s.x, b.z, acc);
    acc = fmaf(s.y, b.w, acc);
    return acc;
}

// Where a warp stands in its list of (row, matrix, chunk) work items.
struct Cursor {
    unsigned row;   // index among the warp's rows
    unsigned part;  // 0, or 1 for the up matrix of a gated launch
    unsigned j;     // chunk slot of the lane within the row, < per_lane
};

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

template <typename W, bool GATED>
__device__ __forceinline__ void gemv_one(const qrt_gemv_args& args) {
    extern __shared__ float4 staged[];
    const unsigned k = args.k;
    const unsigned chunks = k / 8;
    float4* x_lo = staged;           // x[8c .. 8c + 4) of chunk c
    float4* x_hi = staged + chunks;  // x[8c + 4 .. 8c + 8)
    const unsigned lane = threadIdx.x % qrt::kWarp;
    const unsigned warp = threadIdx.x / qrt::kWarp;
    const unsigned warps = blockDim.x / qrt::kWarp;
    const unsigned first = blockIdx.x * warps + warp;
    const unsigned stride = gridDim.x * warps;

    unsigned rows = args.seg[0].n;
    if (!GATED) {
#pragma unroll
        for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i)
            rows += i < args.num_segments ? args.seg[i].n : 0;
    }
    const unsigned my_rows = first < rows ? (rows - 1 - first) / stride + 1 : 0;
    const unsigned per_lane = (chunks + qrt::kWarp - 1) / qrt::kWarp;
    constexpr unsigned kParts = GATED ? 2 : 1;
    const unsigned items = my_rows * kParts * per_lane;

    // The load side of the ring: the next item to load and its row's weights.
    auto row_weights = [&](const Cursor& c) -> const uint4* {
        const RowRef ref = find_row<GATED>(args, first + c.row * stride);
        const uint64_t base = (GATED && c.part == 1) ? args.seg[1].w : ref.seg.w;
        return reinterpret_cast<const uint4*>(reinterpret_cast<const W*>(base) +
                                              static_cast<size_t>(ref.row) * k);
    };
    Cursor ld{0, 0, 0};
    const uint4* ld_w = my_rows > 0 ? row_weights(ld) : nullptr;
    auto advance = [&](Cursor& c) -> bool {  // true when a new (row, part) starts
        if (++c.j < per_lane) return false;
        c.j = 0;
        if (++c.part == kParts) {
            c.part = 0;
            ++c.row;
        }
        return true;
    };
    // Loads the next item into `slot` (which is left as it is past the end: those values are
    // never used). A slot is refilled only after it has been consumed, so that the load goes
    // straight into the slot's registers (not through a temporary and a move that would wait
    // for it) and stays in flight until the slot comes round again.
    auto refill = [&](uint4& slot) {
        if (ld.row < my_rows) {
            const unsigned chunk = lane + ld.j * qrt::kWarp;
            if (chunk < chunks) slot = qrt::load_stream(ld_w + chunk);
            if (advance(ld) && ld.row < my_rows) ld_w = row_weights(ld);
        }
    };

    uint4 ring[kRing];
#pragma unroll
    for (int u = 0; u < kRing; ++u) refill(ring[u]);

    // Stage x (times the norm weights) in shared memory; sum its squares for the norm.
    qrt::pdl_enter();
    const float4* x4 = reinterpret_cast<const float4*>(args.x);
    const float4* g4 = reinterpret_cast<const float4*>(args.norm);
    float squares = 0.f;
    for (unsigned i = threadIdx.x; i < 2 * chunks; i += blockDim.x) {
        float4 v = __ldcg(x4 + i);
        if (args.norm != 0) {
            squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            const float4 g = __ldg(g4 + i);
            v = make_float4(v.x * g.x, v.y * g.y, v.z * g.z, v.w * g.w);
        }
        (i % 2 == 0 ? x_lo : x_hi)[i / 2] = v;
    }
    __shared__ float warp_squares[kWarps];
    if (args.norm != 0) {
        squares = qrt::warp_sum(squares);
        if (lane == 0) warp_squares[warp] = squares;
    }
    __syncthreads();
    float scale = 1.f;
    if (args.norm != 0) {
        float total = 0.f;
        for (unsigned i = 0; i < warps; ++i) total += warp_squares[i];
        scale = 1.f / sqrtf(total / static_cast<float>(k) + args.eps);
    }

    // Consume the ring in order, refilling each slot once it is read.
    Cursor at{0, 0, 0};
    float acc = 0.f;
    float gate = 0.f;
    auto consume = [&](const uint4 w) {
        const unsigned chunk = lane + at.j * qrt::kWarp;
        if (chunk < chunks) acc = dot8<W>(w, x_lo[chunk], x_hi[chunk], acc);
        if (at.j + 1 < per_lane) {
            ++at.j;
            return;
        }
        const float sum = qrt::warp_sum(acc) * scale;
        acc = 0.f;
        if (GATED && at.part == 0) {
            gate = sum;
        } else if (lane == 0) {
            const RowRef ref = find_row<GATED>(args, first + at.row * stride);
            float v = sum;
            if (GATED) {
                v = gate / (1.f + expf(-gate)) * sum;  // silu(gate) * up, as the CPU computes it
            } else if (ref.seg.bias != 0) {
                v += reinterpret_cast<const float*>(ref.seg.bias)[ref.row];
            }
            float* y = reinterpret_cast<float*>(ref.seg.y) + ref.row;
            if (args.accumulate) v += __ldcg(y);
            *y = v;
        }
        advance(at);
    };
    for (unsigned t = 0; t < items; t += kRing) {
#pragma unroll
        for (int u = 0; u < kRing; ++u) {
            if (t + u < items) {
                consume(ring[u]);
                refill(ring[u]);
            }
        }
    }
}

}  // namespace

#define QRT_GEMV_ONE(NAME, W)                                                               \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_##NAME(const qrt_gemv_args args) {                                     \
        gemv_one<W, false>(args);                                                           \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(kWarps * qrt::kWarp, 2)                    \
        qrt_gemv_one_gated_##NAME(const qrt_gemv_args args) {                               \
        gemv_one<W, true>(args);                                                            \
    }

QRT_GEMV_ONE(f16, __half)
QRT_GEMV_ONE(bf16, __nv_bfloat16)
