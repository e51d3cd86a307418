// RMSNorm over rows.
//
//   y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:]
//
// Activations are f32 or f16 (`__half`), in and out alike, or f32 in and f16 / bf16 out (the
// input of a tensor-core GEMM); the weight is always f32, and all arithmetic (the sum of
// squares included) is done in f32. One thread block
// per row; `blockDim.x` must be a multiple of 32 and at most
// QRT_MAX_BLOCK_THREADS. Rows are read with 16-byte vector loads when the
// column count, the strides and every base pointer allow it, else one element
// at a time.
//
// Aliasing: `y` may be the same buffer as `x` (in place); every element is
// read and then written by the same thread. Partially overlapping buffers are
// not supported.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"
#include "qrt_kernels.h"

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Conversions between an activation type and the f32 used for arithmetic,
// and how many activations fit in one 16-byte vector load.
template <typename T>
struct Act;

template <>
struct Act<float> {
    static constexpr unsigned kVec = 4;
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
};

template <>
struct Act<__half> {
    static constexpr unsigned kVec = 8;
    static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }
};

// 16 bytes of activations, loaded and stored as one vector access.
template <typename T>
struct alignas(16) Pack {
    T v[Act<T>::kVec];
};

// 16 bytes of f32 weights.
struct alignas(16) Pack4 {
    float v[4];
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Loads the kVec weights starting at w[c] (c a multiple of kVec, w 16-byte aligned).
template <typename T>
__device__ __forceinline__ void load_weights(const float* __restrict__ w, uint32_t c,
                                             float (&out)[Act<T>::kVec]) {
#pragma unroll
    for (unsigned j = 0; j < Act<T>::kVec / 4; ++j) {
        const Pack4 p = *reinterpret_cast<const Pack4*>(w + c + 4 * j);
#pragma unroll
        for (unsigned i = 0; i < 4; ++i) out[4 * j + i] = p.v[i];
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (unsigned offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(kFullMask, v, offset);
    }
    return v;
}

// Sum of `v` over the whole block, returned to every thread. Called once per
// kernel (its shared memory is not reusable without another barrier).
__device__ float block_sum(float v) {
    __shared__ float warp_partials[QRT_MAX_BLOCK_THREADS / kWarpSize];
    __shared__ float total;
    const unsigned lane = threadIdx.x % kWarpSize;
    const unsigned warp = threadIdx.x / kWarpSize;
    v = warp_sum(v);
    if (lane == 0) warp_partials[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned warps = blockDim.x / kWarpSize;
        float t = lane < warps ? warp_partials[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    return total;
}

// 1 / sqrt(mean square + eps), with IEEE division and square root.
__device__ __forceinline__ float inv_rms(float sum_sq, const qrt_rms_norm_args& a) {
    return 1.0f / sqrtf(sum_sq / static_cast<float>(a.cols) + a.eps);
}

// bf16 only as an output (of the normalisation into a GEMM's input).
template <>
struct Act<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 from_f32(float v) {
        return __float2bfloat16_rn(v);
    }
};

// N values of type Out stored with one vector access (N * sizeof(Out) bytes, aligned to it).
template <typename Out, unsigned N>
struct alignas(N * sizeof(Out)) OutPack {
    Out v[N];
};

// Writes y[c] = x[c] * scale * w[c] for this thread's columns (second pass), rounded to Out.
template <typename In, typename Out>
__device__ __forceinline__ void scale_row(const In* x, const float* __restrict__ w, Out* y,
                                          uint32_t cols, float scale, bool vec) {
    using A = Act<In>;
    if (vec) {
        for (uint32_t c = threadIdx.x * A::kVec; c < cols; c += blockDim.x * A::kVec) {
            const Pack<In> in = *reinterpret_cast<const Pack<In>*>(x + c);
            float wv[A::kVec];
            load_weights<In>(w, c, wv);
            OutPack<Out, A::kVec> out;
#pragma unroll
            for (unsigned i = 0; i < A::kVec; ++i) {
                out.v[i] = Act<Out>::from_f32(A::to_f32(in.v[i]) * scale * wv[i]);
            }
            *reinterpret_cast<OutPack<Out, A::kVec>*>(y + c) = out;
        }
    } else {
        for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
            y[c] = Act<Out>::from_f32(A::to_f32(x[c]) * scale * w[c]);
        }
    }
}

template <typename In, typename Out>
__device__ void rms_norm_row(const qrt_rms_norm_args& a, const In* x, const float* __restrict__ w,
                             Out* y) {
    using A = Act<In>;
    const size_t row = blockIdx.x;
    x += row * a.x_stride;
    y += row * a.y_stride;
    const bool vec = a.cols % A::kVec == 0 && a.x_stride % A::kVec == 0 &&
                     a.y_stride % A::kVec == 0 && aligned16(x) && aligned16(y) && aligned16(w);

    float sum_sq = 0.0f;
    if (vec) {
        for (uint32_t c = threadIdx.x * A::kVec; c < a.cols; c += blockDim.x * A::kVec) {
            const Pack<In> in = *reinterpret_cast<const Pack<In>*>(x + c);
#pragma unroll
            for (unsigned i = 0; i < A::kVec; ++i) {
                const float v = A::to_f32(in.v[i]);
                sum_sq = fmaf(v, v, sum_sq);
            }
        }
    } else {
        for (uint32_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
            const float v = A::to_f32(x[c]);
            sum_sq = fmaf(v, v, sum_sq);
        }
    }
    const float scale = inv_rms(block_sum(sum_sq), a);
    scale_row<In, Out>(x, w, y, a.cols, scale, vec);
}

}  // namespace

// qrt_rms_norm_<NAME>: rows of IN normalised into OUT. f32 -> f16 / bf16 makes the input of a
// tensor-core GEMM in one pass.
#define QRT_RMS_NORM(NAME, IN, OUT)                                                        \
    extern "C" __global__ void __launch_bounds__(QRT_MAX_BLOCK_THREADS)                    \
        qrt_rms_norm_##NAME(const qrt_rms_norm_args args, const IN* x,                     \
                            const float* __restrict__ w, OUT* y) {                         \
        qrt::pdl_enter();                                                                  \
        if (blockIdx.x >= args.rows) return;                                               \
        rms_norm_row<IN, OUT>(args, x, w, y);                                              \
    }

QRT_RMS_NORM(f32, float, float)
QRT_RMS_NORM(f16, __half, __half)
QRT_RMS_NORM(f32_to_f16, float, __half)
QRT_RMS_NORM(f32_to_bf16, float, __nv_bfloat16)
