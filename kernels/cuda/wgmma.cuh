// Hopper's warpgroup tensor-core instructions (sm_90a): shared-memory matrix descriptors of
// 128-byte-swizzled K-major tiles, the async group fences, and wgmma.mma_async for 64 x N x 16
// products with f32 accumulators. Used by gemm_wgmma.cu and gemm_tma.cu.
#pragma once

#include <stdint.h>

#include "common.cuh"

namespace qrt {

#if __CUDA_ARCH__ >= 900

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
template <int N>
__device__ __forceinline__ void pin(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d += a * b^T for a 64 x 16 slice of a and an N x 16 slice of b (both K-major, in shared
// memory), d this thread's N / 2 accumulators of the 64 x N product: accumulator i holds row
// 16 (warp % 4) + lane / 4 (+ 8 for i % 4 >= 2) of the warpgroup's 64, column
// 8 (i / 4) + 2 (lane % 4) + i % 2.
template <typename W>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b);
template <typename W>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b);
template <typename W>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t a, uint64_t b);

// The accumulator operands of a 64 x 64, a 64 x 128 and a 64 x 256 product: the register list of the
// instruction and the asm output list.
#define QRT_ACC_REGS_32                                                                \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define QRT_ACC_REGS_64                                                                \
    QRT_ACC_REGS_32 ", "                                                               \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define QRT_ACC_REGS_128                                                                             \
    QRT_ACC_REGS_64 ", "                                                                             \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "               \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "               \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "   \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define QRT_ACC_OUTS_32                                                                                     \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define QRT_ACC_OUTS_64                                                                                     \
    QRT_ACC_OUTS_32,                                                                                        \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define QRT_ACC_OUTS_128                                                                                            \
    QRT_ACC_OUTS_64,                                                                                                \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),         \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),         \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),         \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),         \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),     \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// The specialisation of wgmma_m64n<N>k16 for weight type W (PTX type TY): ACC accumulators,
// REGS and OUTS their operand lists, DESC the operand numbers of the two descriptors.
#define QRT_WGMMA(N, ACC, REGS, OUTS, DESC, W, TY)                                              \
    template <>                                                                                \
    __device__ __forceinline__ void wgmma_m64n##N##k16<W>(float (&d)[ACC], uint64_t a,          \
                                                          uint64_t b) {                        \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" REGS "}, " \
                     DESC ", p, 1, 1, 0, 0;\n}"                                                 \
                     : OUTS                                                                    \
                     : "l"(a), "l"(b));                                                        \
    }

QRT_WGMMA(64, 32, QRT_ACC_REGS_32, QRT_ACC_OUTS_32, "%32, %33", __half, "f16")
QRT_WGMMA(64, 32, QRT_ACC_REGS_32, QRT_ACC_OUTS_32, "%32, %33", __nv_bfloat16, "bf16")
QRT_WGMMA(128, 64, QRT_ACC_REGS_64, QRT_ACC_OUTS_64, "%64, %65", __half, "f16")
QRT_WGMMA(128, 64, QRT_ACC_REGS_64, QRT_ACC_OUTS_64, "%64, %65", __nv_bfloat16, "bf16")
QRT_WGMMA(256, 128, QRT_ACC_REGS_128, QRT_ACC_OUTS_128, "%128, %129", __half, "f16")
QRT_WGMMA(256, 128, QRT_ACC_REGS_128, QRT_ACC_OUTS_128, "%128, %129", __nv_bfloat16, "bf16")

#endif

}  // namespace qrt
