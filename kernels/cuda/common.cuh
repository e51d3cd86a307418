// Device-side helpers shared by the kernels: 16-bit weight types, vector loads, reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "qrt_kernels.h"

namespace qrt {

constexpr unsigned kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (unsigned o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFull, v, o);
    return v;
}

// v * scale * g, elementwise: an RMSNorm applied to four values (the order of norm.cu).
__device__ __forceinline__ float4 scaled(float4 v, float4 g, float scale) {
    return make_float4(v.x * scale * g.x, v.y * scale * g.y, v.z * scale * g.z, v.w * scale * g.w);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (unsigned o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

// A 16-bit floating-point storage type: f16 or bf16.
template <typename T>
struct Half16;

template <>
struct Half16<__half> {
    using Pair = __half2;
    static __device__ __forceinline__ Pair pack(float a, float b) { return __floats2half2_rn(a, b); }
    static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
        return __half22float2(*reinterpret_cast<const __half2*>(&bits));
    }
    static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Half16<__nv_bfloat16> {
    using Pair = __nv_bfloat162;
    static __device__ __forceinline__ Pair pack(float a, float b) {
        return __floats2bfloat162_rn(a, b);
    }
    static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
        // bf16 is the top half of an f32: shifts, no conversion instruction.
        return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
    }
    static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
        return __float2bfloat16_rn(v);
    }
};

// Programmatic dependent launch (sm_90 and newer; no-ops before, and for kernels launched
// without the attribute). Every kernel calls `wait` before it touches data an earlier kernel
// of the stream wrote (or writes anything), then `launch_dependents`, which lets the next
// kernel be scheduled and run its own prologue (a GEMV, or a skinny GEMM of a small product,
// streams in its weights) meanwhile.
// Kernels trigger their dependents after their own `wait`, with one exception: a large
// tensor-core GEMV (`early`, gemv_tc.cu) triggers before it, so that the next kernel launches
// and requests its weights while this one waits. Either way the next kernel's `wait` returns
// only once this one has finished, which is after this one's own `wait`. The decode attention
// loads the KV cache of earlier steps before its `wait`; it relies on triggering after its
// own `wait`, like every kernel but those GEMVs: when it starts, every kernel before the last
// one that triggered after its wait (at worst the previous attention, or the pass's first
// kernel) has finished, and with it every writer of those keys and values. Keep it so: no
// kernel that reads what earlier kernels wrote before its `wait` may trigger early.
// Data an earlier kernel wrote must never be read through the non-coherent path (`__ldg`,
// `ld.global.nc`): the assembler may move such loads above the wait, since they promise
// memory that does not change while the kernel runs. Activations are read with `__ldcg`.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both, in order: for kernels with nothing to do before their inputs are ready.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

// acc plus the dot product of the 8 16-bit weights in `w` with the 8 f32 activations in a, b
// (FMA chain, in order).
template <typename W>
__device__ __forceinline__ float dot8(const uint4& w, const float4& a, const float4& b,
                                      float acc) {
    const float2 p = Half16<W>::to_float2(w.x);
    const float2 q = Half16<W>::to_float2(w.y);
    const float2 r = Half16<W>::to_float2(w.z);
    const float2 s = Half16<W>::to_float2(w.w);
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

// SwiGLU's product silu(gate) * up, as the CPU reference computes it.
__device__ __forceinline__ float swiglu(float gate, float up) {
    return gate / (1.f + expf(-gate)) * up;
}

// A product's result `v` stored at y, added to what y holds when `accumulate` (a residual
// add; y was written by an earlier kernel, hence the coherent load).
__device__ __forceinline__ void store_result(float* y, float v, bool accumulate) {
    if (accumulate) v += __ldcg(y);
    *y = v;
}

// The end of GEMV output row `row` of batch row `b` of segment `seg`: `v` plus the row's bias
// when BIAS (not in gated launches, which have none), stored by store_result.
template <bool BIAS>
__device__ __forceinline__ void store_gemv_row(const qrt_gemv_args& args,
                                               const qrt_gemv_segment& seg, size_t b,
                                               unsigned row, float v) {
    if (BIAS && seg.bias != 0) v += reinterpret_cast<const float*>(seg.bias)[row];
    store_result(reinterpret_cast<float*>(seg.y) + b * seg.n + row, v, args.accumulate);
}

// The segment of a GEMM launch (several matrices of one input) that this block's column of
// tiles belongs to; compile-time indices, so the arguments stay in registers.
__device__ __forceinline__ qrt_gemm_segment gemm_segment(const qrt_gemm_args& args) {
    qrt_gemm_segment seg = args.seg[0];
#pragma unroll
    for (unsigned i = 1; i < QRT_GEMV_MAX_SEGMENTS; ++i) {
        if (i < args.num_segments && blockIdx.x >= args.seg[i].first_tile) seg = args.seg[i];
    }
    return seg;
}

// Row `row` of a GEMM weight tile whose rows start at matrix row `r0`: row r0 + row of `w`,
// or for GATED tiles row r0 + row / 2 of `gate` (even rows) or `up` (odd rows), so that an
// accumulator pair of columns 2j, 2j + 1 holds the gate and the up product of one output.
// Sets `matrix_row` for the bounds check.
template <typename W, bool GATED>
__device__ __forceinline__ const W* gemm_weight_row(const W* w, const W* up, int r0, int row,
                                                    int k, int& matrix_row) {
    matrix_row = GATED ? r0 + row / 2 : r0 + row;
    const W* base = GATED && (row & 1) ? up : w;
    return base + static_cast<size_t>(matrix_row) * k;
}

// Stores silu(gate) * up of output (row, col) of a gated GEMM (`qrt_gemm_gated_*`).
template <typename W>
__device__ __forceinline__ void store_gated(const qrt_gemm_segment& seg, int row, int col,
                                            float gate, float up) {
    reinterpret_cast<W*>(seg.c)[static_cast<size_t>(row) * seg.n + col] =
        Half16<W>::from_float(swiglu(gate, up));
}

// mma.sync m16n8k16 with f32 accumulation on 16-bit operands of type W (sm_80 and newer):
// d += a * b, a the row-major 16x16 fragment a0..a3, b the column-major 16x8 fragment b0, b1.
template <typename W>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], uint32_t a0, uint32_t a1,
                                                 uint32_t a2, uint32_t a3, uint32_t b0,
                                                 uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1,
                                                        uint32_t a2, uint32_t a3, uint32_t b0,
                                                        uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes read once from global memory, bypassing L1 (weights are streamed, never reused).
__device__ __forceinline__ uint4 load_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// 16 bytes loaded with `LOAD` (a ld.global.v4.u32 with its qualifiers) into `v` where `pred`
// holds; `v` is left as it is elsewhere. A predicated load, not a branch around one: a load on
// one side of a branch only makes ptxas wait for every load in flight where the paths meet,
// which drains a software pipeline of loads.
#define QRT_LOAD16_IF(NAME, LOAD)                                                  \
    __device__ __forceinline__ void NAME(uint4& v, const void* p, bool pred) {     \
        asm volatile(                                                              \
            "{\n"                                                                  \
            "  .reg .pred p;\n"                                                    \
            "  setp.ne.b32 p, %5, 0;\n"                                            \
            "  @p " LOAD " {%0, %1, %2, %3}, [%4];\n"                              \
            "}"                                                                    \
            : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)                           \
            : "l"(p), "r"(static_cast<int>(pred)));                                \
    }

// load_stream where `pred` holds (weights).
QRT_LOAD16_IF(load_stream_if, "ld.global.nc.L1::no_allocate.v4.u32")

// Through L2 where `pred` holds: for data other kernels wrote (the KV cache).
QRT_LOAD16_IF(load_cg_if, "ld.global.cg.v4.u32")

// Through the non-coherent cache where `pred` holds: for constants read by many blocks (norm
// weights).
QRT_LOAD16_IF(load_nc_if, "ld.global.nc.v4.u32")

#undef QRT_LOAD16_IF

// 16 bytes of shared memory at `p` into `v` where `pred` holds, else zeros; predicated, like
// the loads above, so that a group of them stays one straight run of code.
__device__ __forceinline__ uint4 load_shared_or_zero(const uint4* p, bool pred) {
    uint4 v = make_uint4(0, 0, 0, 0);
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile(
        "{\n"
        "  .reg .pred p;\n"
        "  setp.ne.b32 p, %5, 0;\n"
        "  @p ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
        "}"
        : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)
        : "r"(addr), "r"(static_cast<int>(pred)));
    return v;
}

// 16 bytes copied asynchronously from global to shared memory (at shared address `dst`),
// zeros instead where `valid` is false (sm_80 and newer). Completed by cp_async_wait.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

// bar.sync on named barrier `id` (1-15; 0 is __syncthreads) of `count` threads (a multiple of
// the warp size): lets part of a block synchronise while the rest works on.
__device__ __forceinline__ void named_barrier(unsigned id, unsigned count) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}

// Waits until at most N committed groups of cp_async16 copies are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// Four 8x8 16-bit matrices from shared memory: lanes 8i .. 8i + 7 give the row addresses of
// matrix i; r[i] is this lane's fragment of matrix i (row lane / 4, columns 2 (lane % 4) + 0, 1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// ldmatrix_x4 transposed: r[i] holds rows 2 (lane % 4) + 0, 1 of column lane / 4 of matrix i.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

}  // namespace qrt
