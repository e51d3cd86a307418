// Helpers shared by the GPU probes: f16 weights times f32 activations, a warp's sum, and a
// launch with programmatic dependent launch.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

// Launches `kernel(args...)` on `grid` blocks of `threads` with `smem` bytes of dynamic shared
// memory on `stream`; `programmatic`: it may start before the kernel ahead of it in the stream
// has finished (programmatic dependent launch, its griddepcontrol.wait then waits for it).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), unsigned grid, unsigned threads, size_t smem,
                   cudaStream_t stream, bool programmatic, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = programmatic ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}
