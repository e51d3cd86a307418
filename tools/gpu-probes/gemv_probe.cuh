// Device helpers shared by the GEMV probes (chain.cu, timeline.cu): f16 weights times f32
// activations, and a warp's sum.
#pragma once
#include <cuda_fp16.h>

// The dot product of the 8 f16 weights in `w` with x[0..8).
__device__ __forceinline__ float dot8(uint4 w, const float* x) {
    const __half2* h = reinterpret_cast<const __half2*>(&w);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __half22float2(h[i]);
        s += f.x * x[2 * i] + f.y * x[2 * i + 1];
    }
    return s;
}

__device__ __forceinline__ float warp_sum(float s) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    return s;
}
