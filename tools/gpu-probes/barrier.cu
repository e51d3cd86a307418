// What a step between dependent phases costs on this GPU: a kernel boundary (graph-replayed,
// with and without programmatic dependent launch) against a grid barrier inside one
// persistent kernel. Each phase: every block reads the whole previous output x (n floats,
// from L2), every thread writes one value of the next output (RESULTS log 45).
// Build and run on the GPU machine: nvcc -O2 -arch=sm_90 -o barrier barrier.cu && ./barrier
#include <cooperative_groups.h>
#include <cstdio>
#include <cuda_runtime.h>

#include "probe.cuh"
namespace cg = cooperative_groups;

constexpr int kThreads = 256;

__device__ __forceinline__ float phase_work(const float* x, int n, int phase) {
    __shared__ float part[kThreads / 32];
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += kThreads) s += __ldcg(x + i);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) t += part[w];
    __syncthreads();
    return t * 1e-6f + phase + threadIdx.x;
}

__global__ void __launch_bounds__(kThreads) step_kernel(const float* x, float* y, int n, int phase) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    const float v = phase_work(x, n, phase);
    const int i = blockIdx.x * kThreads + threadIdx.x;
    if (i < n) y[i] = v;
    asm volatile("griddepcontrol.launch_dependents;");
}

// Sense-reversing barrier over all blocks: counter and generation in global memory.
__device__ __forceinline__ void grid_barrier(unsigned* count, volatile unsigned* gen, unsigned blocks) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned g = *gen;
        __threadfence();
        if (atomicAdd(count, 1) == blocks - 1) {
            *count = 0;
            __threadfence();
            atomicAdd((unsigned*)gen, 1);
        } else {
            while (*gen == g) {}
        }
        __threadfence();
    }
    __syncthreads();
}

__global__ void __launch_bounds__(kThreads) persistent(float* a, float* b, int n, int phases,
                                                       unsigned* count, unsigned* gen, int use_cg) {
    cg::grid_group grid = cg::this_grid();
    for (int p = 0; p < phases; ++p) {
        const float* x = (p % 2) ? b : a;
        float* y = (p % 2) ? a : b;
        const float v = phase_work(x, n, p);
        const int i = blockIdx.x * kThreads + threadIdx.x;
        if (i < n) y[i] = v;
        if (use_cg) grid.sync(); else grid_barrier(count, gen, gridDim.x);
    }
}

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const int phases = 200;
    float *a, *b;
    unsigned *count, *gen;
    const int n_max = 16384;
    cudaMalloc(&a, n_max * 4); cudaMalloc(&b, n_max * 4);
    cudaMemset(a, 0, n_max * 4); cudaMemset(b, 0, n_max * 4);
    cudaMalloc(&count, 4); cudaMalloc(&gen, 4);
    cudaMemset(count, 0, 4); cudaMemset(gen, 0, 4);
    cudaStream_t s; cudaStreamCreate(&s);
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    printf("%-44s %8s %8s\n", "per phase (us), 200 phases, median of 5", "n=2048", "n=16384");
    cudaFuncSetAttribute(step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 * 1024);
    for (int mode = 0; mode < 6; ++mode) {
        const char* names[] = {"kernel boundary, graph, PDL", "kernel boundary, graph, no PDL",
                               "persistent, atomic barrier", "persistent, cg grid.sync",
                               "boundary, PDL, 120 KB a block (no room)", "boundary, no PDL, 120 KB a block"};
        const int smem = mode >= 4 ? 120 * 1024 : 0;
        const int chain = mode < 2 || mode >= 4;
        const int pdl = mode == 0 || mode == 4;
        printf("%-44s", names[mode]);
        for (int n : {2048, 16384}) {
            const int blocks = sms;  // one block a multiprocessor, as a decode GEMV fills them
            cudaGraphExec_t exec = nullptr;
            if (chain) {
                cudaGraph_t graph;
                cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
                for (int p = 0; p < phases; ++p) {
                    const float* x = (p % 2) ? b : a;
                    float* y = (p % 2) ? a : b;
                    launch(step_kernel, blocks, kThreads, smem, s, pdl, x, y, n, p);
                }
                cudaStreamEndCapture(s, &graph);
                cudaGraphInstantiate(&exec, graph, 0);
            }
            float best[5];
            for (int r = 0; r < 6; ++r) {
                cudaEventRecord(e0, s);
                if (chain) {
                    cudaGraphLaunch(exec, s);
                } else {
                    int use_cg = mode == 3, ph = phases, nn = n;
                    void* args[] = {&a, &b, &nn, &ph, &count, &gen, &use_cg};
                    cudaLaunchCooperativeKernel((void*)persistent, dim3(blocks), dim3(kThreads), args, 0, s);
                }
                cudaEventRecord(e1, s);
                cudaEventSynchronize(e1);
                float ms; cudaEventElapsedTime(&ms, e0, e1);
                if (r > 0) best[r - 1] = ms * 1000.f / phases;
            }
            for (int i = 0; i < 5; ++i) for (int j = i + 1; j < 5; ++j) if (best[j] < best[i]) { float t = best[i]; best[i] = best[j]; best[j] = t; }
            printf(" %8.3f", best[2]);
        }
        printf("\n");
    }
    printf("error: %s\n", cudaGetErrorString(cudaGetLastError()));
}
