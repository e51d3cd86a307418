// GEMV for decode: y[b, i] = sum_j x[b, j] * w[i, j] (+ bias[i]) (+ y[b, i] when accumulating)
// for a batch of 1 to 8 rows of f32 activations against 16-bit (f16 or bf16) weights, f32
// accumulation. Batches of one normally run on gemv_one.cu and larger batches on the tensor
// cores (gemv_tc.cu); this kernel takes the rest (k not a multiple of 32, too large for
// gemv_one's shared memory, or a batch whose input no tensor-core block can stage).
//
// Decode is bound by reading the weights, so each weight byte is read exactly once, in 16-byte
// loads that bypass L1, and is used for every row of the batch. A block has 32 * WK threads
// (WK warps, from blockDim.x): all of them split the k dimension of the block's R rows,
// partial sums are reduced within warps by shuffles and across warps in shared memory.
// Several matrices that read the same x (q, k and v; gate and up) go in one launch as segments;
// the gated kernels (`qrt_gemv_gated_*`) read gate and up rows together and write
// silu(gate) * up, so SwiGLU's input never needs a kernel of its own.

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

using qrt::Half16;

constexpr unsigned kMaxWarps = 8;

// GATED: the launch has two segments, gate and up, of the same shape; a block reads R / 2 rows
// of each and writes silu(gate) * up for those rows into the gate segment's `y`.
template <typename W, int B, int R, bool GATED>
__device__ __forceinline__ void gemv(const qrt_gemv_args& args) {
    // Find this block's segment.
    // (Compile-time indices only, so that the argument struct stays in registers.)
    qrt_gemv_segment seg = args.seg[0];
    if (!GATED) {
#pragma unroll
        for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i) {
            if (i < args.num_segments && blockIdx.x >= args.seg[i].first_block) seg = args.seg[i];
        }
    }
    constexpr int kOutRows = GATED ? R / 2 : R;
    const unsigned row0 = (blockIdx.x - seg.first_block) * kOutRows;
    const unsigned k = args.k;
    const unsigned chunks = k / 8;
    const unsigned threads = blockDim.x;
    const unsigned tid = threadIdx.x;

    const float* x = reinterpret_cast<const float*>(args.x);
    const uint4* wrow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        // Gated: rows [0, R/2) of the block are gate rows, the rest the same rows of up.
        const bool up_row = GATED && r >= kOutRows;
        const W* w = reinterpret_cast<const W*>(up_row ? args.seg[1].w : seg.w);
        // Rows past the end re-read the last row; their sums are not stored.
        const unsigned row = min(row0 + (up_row ? r - kOutRows : r), seg.n - 1);
        wrow[r] = reinterpret_cast<const uint4*>(w + static_cast<size_t>(row) * k);
    }

    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) acc[r][b] = 0.f;

    // The products of chunk cc of the R weight rows in `wv` with every batch row of x.
    auto accumulate = [&](const uint4 (&wv)[R], unsigned cc) {
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const float4* xb = reinterpret_cast<const float4*>(x + static_cast<size_t>(b) * k);
            const float4 x0 = __ldcg(xb + 2 * cc);
            const float4 x1 = __ldcg(xb + 2 * cc + 1);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r][b] = qrt::dot8<W>(wv[r], x0, x1, acc[r][b]);
        }
    };

    unsigned c = tid;
    // Two chunks per iteration: 2 * R independent 16-byte weight loads in flight. The first
    // ones are issued before waiting for the previous kernel (weights never change).
    bool waited = false;
    for (; c + threads < chunks; c += 2 * threads) {
        uint4 wv[2][R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            wv[0][r] = qrt::load_stream(wrow[r] + c);
            wv[1][r] = qrt::load_stream(wrow[r] + c + threads);
        }
        if (!waited) {
            qrt::pdl_enter();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) accumulate(wv[u], c + u * threads);
    }
    if (c < chunks) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r] = qrt::load_stream(wrow[r] + c);
        if (!waited) {
            qrt::pdl_enter();
            waited = true;
        }
        accumulate(wv, c);
    }

    if (!waited) qrt::pdl_enter();  // a thread with no chunk
    __shared__ float partial[kMaxWarps][R * B];
    const unsigned warp = tid / qrt::kWarp;
    const unsigned lane = tid % qrt::kWarp;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const float v = qrt::warp_sum(acc[r][b]);
            if (lane == 0) partial[warp][r * B + b] = v;
        }
    __syncthreads();
    const unsigned warps = threads / qrt::kWarp;
    for (unsigned i = tid; i < kOutRows * B; i += threads) {
        const unsigned r = i / B;
        const unsigned b = i % B;
        const unsigned row = row0 + r;
        if (row >= seg.n) continue;
        float sum = 0.f;
        for (unsigned j = 0; j < warps; ++j) sum += partial[j][i];
        if (GATED) {
            float up = 0.f;
            for (unsigned j = 0; j < warps; ++j) up += partial[j][i + kOutRows * B];
            sum = qrt::swiglu(sum, up);
        }
        qrt::store_gemv_row<!GATED>(args, seg, b, row, sum);
    }
}

}  // namespace

#define QRT_GEMV(NAME, W, B, R)                                                         \
    extern "C" __global__ void __launch_bounds__(kMaxWarps * qrt::kWarp)                \
        qrt_gemv_##NAME##_b##B##_r##R(const qrt_gemv_args args) {                       \
        gemv<W, B, R, false>(args);                                                     \
    }

#define QRT_GEMV_GATED(NAME, W, B, R)                                                   \
    extern "C" __global__ void __launch_bounds__(kMaxWarps * qrt::kWarp)                \
        qrt_gemv_gated_##NAME##_b##B##_r##R(const qrt_gemv_args args) {                 \
        gemv<W, B, R, true>(args);                                                      \
    }

#define QRT_GEMV_ROWS(NAME, W, B) \
    QRT_GEMV(NAME, W, B, 1)       \
    QRT_GEMV(NAME, W, B, 2)       \
    QRT_GEMV(NAME, W, B, 4)       \
    QRT_GEMV_GATED(NAME, W, B, 2) \
    QRT_GEMV_GATED(NAME, W, B, 4)

#define QRT_GEMV_ALL(NAME, W)   \
    QRT_GEMV_ROWS(NAME, W, 1)   \
    QRT_GEMV_ROWS(NAME, W, 2)   \
    QRT_GEMV_ROWS(NAME, W, 3)   \
    QRT_GEMV_ROWS(NAME, W, 4)   \
    QRT_GEMV_ROWS(NAME, W, 5)   \
    QRT_GEMV_ROWS(NAME, W, 6)   \
    QRT_GEMV_ROWS(NAME, W, 7)   \
    QRT_GEMV_ROWS(NAME, W, 8)

QRT_GEMV_ALL(f16, __half)
QRT_GEMV_ALL(bf16, __nv_bfloat16)
