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

namespace {

#if __CUDA_ARCH__ >= 900

constexpr int kBN = 128;
constexpr int kBK = 64;  // 16-bit values per 128-byte swizzle row
constexpr int kRowBytes = kBK * 2;
constexpr int kStages = 4;

// A block of WG warpgroups. Its dynamic shared memory (`gemm_wgmma_smem` in launch.rs) is
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

// A shared-memory matrix descriptor of a K-major operand with the 128-byte swizzle: 8-row
// groups 1 KiB apart, starting at shared address `addr`.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr) {
    return static_cast<uint64_t>((addr & 0x3ffff) >> 4) | (1ull << 16) |
           (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accesses of the accumulators across a wgmma fence or wait.
__device__ __forceinline__ void pin(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d += a * b^T for a 64 x 16 slice of a and a 128 x 16 slice of b (both K-major, in shared
// memory), d this thread's 64 accumulators of the 64 x 128 product.
template <typename W>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b);

#define QRT_WGMMA(W, TY)                                                                       \
    template <>                                                                                \
    __device__ __forceinline__ void wgmma_m64n128k16<W>(float (&d)[64], uint64_t a,           \
                                                        uint64_t b) {                          \
        asm volatile(                                                                          \
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                     \
            "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, "  \
            "1, 0, 0;\n}"                                                                      \
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                             \
            : "l"(a), "l"(b));                                                                 \
    }

QRT_WGMMA(__half, "f16")
QRT_WGMMA(__nv_bfloat16, "bf16")

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
    pin(d);
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
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
            wgmma_m64n128k16<W>(d, descriptor(at + kk * 32), descriptor(wt + kk * 32));
        wgmma_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();
    pin(d);
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
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            const int row = row0 + ((i % 4) / 2) * 8;
            const int col = n0 + (i / 4) * 8 + (lane % 4) * 2 + i % 2;
            if (row < m && col < n) {
                float v = d[i];
                if (bias != nullptr) v += bias[col];
                qrt::store_result(c + static_cast<size_t>(row) * n + col, v, args.accumulate);
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
