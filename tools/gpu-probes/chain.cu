// A chain of dependent GEMVs of the Llama-3.2-1B o shape (2048 x 2048 f16, y = W x, the next
// phase's x is this phase's y), five ways (RESULTS log 45):
//  (a) one kernel a phase, graph-replayed with programmatic dependent launch, like qrt's lean
//      batch-one GEMV (simpler): a warp a row, its weights requested before the wait;
//  (b) one persistent kernel of 128 blocks, 16 rows each: a block pulls its rows of the phase
//      after next into shared memory (cp.async, two buffers of 64 KB) before the grid barrier,
//      so the weights stream across the barriers;
//  (c) as (b), the pulls issued by warps 1-7 (warp 0's thread 0 fences at the barrier);
//  (d) as (b), the pulls by bulk copies of the tensor memory accelerator;
//  (e) as (c), each phase's rows pulled one phase ahead, after the block has staged its x.
// Matrices rotate over 8 copies (67 MB, past the 50 MB L2). Prints us a phase and GB/s.
// Build and run on the GPU machine: nvcc -O2 -arch=sm_90 -o chain chain.cu && ./chain
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cstdio>
#include <cuda_runtime.h>

#include "probe.cuh"
namespace cg = cooperative_groups;

constexpr int N = 2048, K = 2048, COPIES = 8, THREADS = 256, WARPS = 8;
constexpr int ROWS_PB = 16;                       // persistent: rows a block
constexpr int BLOCKS_P = N / ROWS_PB;             // 128
constexpr int SLICE = ROWS_PB * K * 2;            // 64 KB

// x (K floats, written by the previous phase) into shared memory.
__device__ __forceinline__ void stage_x(const float* x, float* xs) {
    for (int i = threadIdx.x; i < K / 4; i += THREADS)
        reinterpret_cast<float4*>(xs)[i] = __ldcg(reinterpret_cast<const float4*>(x) + i);
}

// The block's ROWS_PB rows, staged in `wb`, times xs into y (two rows a warp).
__device__ __forceinline__ void multiply_rows(const unsigned char* wb, const float* xs, float* y) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int rr = 0; rr < ROWS_PB / WARPS; ++rr) {
        const int local = warp * (ROWS_PB / WARPS) + rr;
        const uint4* wr = reinterpret_cast<const uint4*>(wb + (size_t)local * K * 2);
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) s += dot8(wr[lane + 32 * j], xs + 8 * (lane + 32 * j));
        s = warp_sum(s);
        if (lane == 0) y[blockIdx.x * ROWS_PB + local] = s * (1.f / 26.f);
    }
}

// (a) a warp a row: 8 chunks of 16 B a lane (K = 2048 halves = 256 chunks).
__global__ void __launch_bounds__(THREADS, 4) gemv_lean(const __half* w, const float* x, float* y) {
    __shared__ float xs[K];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * WARPS + warp;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)row * K);
    uint4 r[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) r[j] = __ldcs(wr + lane + 32 * j);
    asm volatile("griddepcontrol.wait;" ::: "memory");
    stage_x(x, xs);
    __syncthreads();
    asm volatile("griddepcontrol.launch_dependents;");
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += dot8(r[j], xs + 8 * (lane + 32 * j));
    s = warp_sum(s);
    if (lane == 0) y[row] = s * (1.f / 26.f);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(gmem) : "memory");
}

// Rows of block b of phase p's matrix into buffer `buf` (64 KB: 4096 chunks, 16 a thread).
template <bool SKIP_WARP0>
__device__ __forceinline__ void pull(const __half* w_all, int p, unsigned char* buf) {
    const unsigned char* src = reinterpret_cast<const unsigned char*>(
        w_all + (size_t)(p % COPIES) * N * K + (size_t)blockIdx.x * ROWS_PB * K);
    if (SKIP_WARP0) {
        // Not warp 0: its thread 0 fences at the grid barrier, and a fence may wait for its
        // own copies in flight.
        for (int c = threadIdx.x - 32; c >= 0 && c < SLICE / 16; c += THREADS - 32)
            cp_async16(buf + 16 * c, src + 16 * c);
    } else {
#pragma unroll
        for (int j = 0; j < SLICE / 16 / THREADS; ++j) {
            const int c = threadIdx.x + j * THREADS;
            cp_async16(buf + 16 * c, src + 16 * c);
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// (b), (c) and (e): LATE pulls each phase's rows one phase ahead, after staging x; otherwise
// two phases ahead, at the end of a phase.
template <bool SKIP_WARP0, bool LATE>
__global__ void __launch_bounds__(THREADS, 1) gemv_persistent(const __half* w_all, float* a, float* b, int phases) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned char* buf[2] = {smem, smem + SLICE};
    float* xs = reinterpret_cast<float*>(smem + 2 * SLICE);
    cg::grid_group grid = cg::this_grid();
    pull<SKIP_WARP0>(w_all, 0, buf[0]);
    if (!LATE) pull<SKIP_WARP0>(w_all, 1, buf[1]);
    for (int p = 0; p < phases; ++p) {
        const float* x = (p % 2) ? b : a;
        float* y = (p % 2) ? a : b;
        stage_x(x, xs);
        // This phase's rows are in (LATE: the only pull in flight; else the older of two).
        if (LATE) asm volatile("cp.async.wait_group 0;" ::: "memory");
        else asm volatile("cp.async.wait_group 1;" ::: "memory");
        __syncthreads();
        if (LATE && p + 1 < phases) pull<SKIP_WARP0>(w_all, p + 1, buf[(p + 1) % 2]);
        multiply_rows(buf[p % 2], xs, y);
        __syncthreads();  // buffer p % 2 and xs are free
        if (!LATE) {
            if (p + 2 < phases) pull<SKIP_WARP0>(w_all, p + 2, buf[p % 2]);
            else asm volatile("cp.async.commit_group;" ::: "memory");
        }
        grid.sync();
    }
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// (d) as (b), the rows pulled by the tensor memory accelerator (bulk copies completing on an
// mbarrier a buffer), issued by one thread of warp 1.
__global__ void __launch_bounds__(THREADS, 1) gemv_persistent_tma(const __half* w_all, float* a, float* b, int phases) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ __align__(8) unsigned long long bars[2];
    unsigned char* buf[2] = {smem, smem + SLICE};
    float* xs = reinterpret_cast<float*>(smem + 2 * SLICE);
    cg::grid_group grid = cg::this_grid();
    const bool issuer = threadIdx.x == 32;
    if (threadIdx.x == 0) {
        for (int i = 0; i < 2; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(smem_u32(&bars[i])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    auto pull = [&](int p, int i) {
        const unsigned char* src = reinterpret_cast<const unsigned char*>(
            w_all + (size_t)(p % COPIES) * N * K + (size_t)blockIdx.x * ROWS_PB * K);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(smem_u32(&bars[i])), "r"(SLICE) : "memory");
        for (int c = 0; c < 4; ++c)
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         ::"r"(smem_u32(buf[i] + c * (SLICE / 4))), "l"(src + c * (SLICE / 4)), "r"(SLICE / 4), "r"(smem_u32(&bars[i])) : "memory");
    };
    if (issuer) { pull(0, 0); pull(1, 1); }
    for (int p = 0; p < phases; ++p) {
        const float* x = (p % 2) ? b : a;
        float* y = (p % 2) ? a : b;
        stage_x(x, xs);
        const int i = p % 2;
        const unsigned parity = (p / 2) & 1;
        unsigned done = 0;
        while (!done)
            asm volatile("{ .reg .pred q; mbarrier.try_wait.parity.shared.b64 q, [%1], %2; selp.u32 %0, 1, 0, q; }"
                         : "=r"(done) : "r"(smem_u32(&bars[i])), "r"(parity) : "memory");
        __syncthreads();
        multiply_rows(buf[i], xs, y);
        __syncthreads();
        if (issuer && p + 2 < phases) pull(p + 2, i);
        grid.sync();
    }
}

int main() {
    const int phases = 400;
    __half* w;
    cudaMalloc(&w, (size_t)COPIES * N * K * 2);
    // Random-ish weights in [-1, 1) from a hash, on the device.
    {
        __half* h = (__half*)malloc((size_t)N * K * 2);
        unsigned s = 12345;
        for (size_t i = 0; i < (size_t)N * K; ++i) { s = s * 1664525u + 1013904223u; h[i] = __float2half(((s >> 8) & 0xffff) / 32768.f - 1.f); }
        for (int c = 0; c < COPIES; ++c) cudaMemcpy(w + (size_t)c * N * K, h, (size_t)N * K * 2, cudaMemcpyHostToDevice);
        free(h);
    }
    float *a, *b, *a2, *b2;
    cudaMalloc(&a, N * 4); cudaMalloc(&b, N * 4); cudaMalloc(&a2, N * 4); cudaMalloc(&b2, N * 4);
    float* x0 = (float*)malloc(N * 4);
    for (int i = 0; i < N; ++i) x0[i] = ((i * 37) % 101) / 101.f - 0.5f;
    cudaStream_t s; cudaStreamCreate(&s);
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    // (a)
    cudaGraph_t graph; cudaGraphExec_t exec;
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    for (int p = 0; p < phases; ++p) {
        launch(gemv_lean, N / WARPS, THREADS, 0, s, true,
               (const __half*)(w + (size_t)(p % COPIES) * N * K), (const float*)((p % 2) ? b : a),
               (p % 2) ? a : b);
    }
    cudaStreamEndCapture(s, &graph);
    cudaGraphInstantiate(&exec, graph, 0);
    const int smem = 2 * SLICE + K * 4;
    cudaFuncSetAttribute(gemv_persistent<false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaFuncSetAttribute(gemv_persistent<true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaFuncSetAttribute(gemv_persistent<true, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    cudaFuncSetAttribute(gemv_persistent_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    float t[5][5];
    for (int r = 0; r < 6; ++r) {
        for (int mode = 0; mode < 5; ++mode) {
            float* A = mode ? a2 : a; float* B = mode ? b2 : b;
            cudaMemcpy(A, x0, N * 4, cudaMemcpyHostToDevice);
            cudaEventRecord(e0, s);
            if (mode == 0) cudaGraphLaunch(exec, s);
            else {
                int ph = phases;
                void* args[] = {&w, &A, &B, &ph};
                cudaLaunchCooperativeKernel(mode == 1 ? (void*)gemv_persistent<false, false> : mode == 2 ? (void*)gemv_persistent<true, false> : mode == 3 ? (void*)gemv_persistent_tma : (void*)gemv_persistent<true, true>, dim3(BLOCKS_P), dim3(THREADS), args, smem, s);
            }
            cudaEventRecord(e1, s);
            cudaEventSynchronize(e1);
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (r > 0) t[mode][r - 1] = ms * 1000.f / phases;
        }
    }
    const char* names[] = {"(a) kernel a phase, graph + PDL (lean GEMV)", "(b) persistent, weights pulled ahead",
                           "(c) as (b), pulled by warps 1-7", "(d) as (b), pulled by bulk copies (TMA)",
                           "(e) as (c), pulled one phase ahead after staging x"};
    for (int mode = 0; mode < 5; ++mode) {
        float* v = t[mode];
        for (int i = 0; i < 5; ++i) for (int j = i + 1; j < 5; ++j) if (v[j] < v[i]) { float q = v[i]; v[i] = v[j]; v[j] = q; }
        printf("%-46s %7.3f us a phase (%.3f-%.3f), %6.0f GB/s of weights\n", names[mode], v[2], v[0], v[4], (double)N * K * 2 / (v[2] * 1e3));
    }
    float* ya = (float*)malloc(N * 4); float* yb = (float*)malloc(N * 4);
    cudaMemcpy(ya, (phases % 2) ? b : a, N * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(yb, (phases % 2) ? b2 : a2, N * 4, cudaMemcpyDeviceToHost);
    double md = 0, mx = 0;
    for (int i = 0; i < N; ++i) { md = fmax(md, fabs(ya[i] - yb[i])); mx = fmax(mx, fabs(ya[i])); }
    printf("outputs after %d phases (a against the last persistent run): max |a - b| %.3g, max |a| %.3g\n", phases, md, mx);
    // copy bandwidth for reference (1 GiB, read + write)
    void *c0, *c1; size_t bytes = 1ull << 30; cudaMalloc(&c0, bytes); cudaMalloc(&c1, bytes);
    cudaMemcpyAsync(c1, c0, bytes, cudaMemcpyDeviceToDevice, s);
    cudaEventRecord(e0, s);
    for (int i = 0; i < 5; ++i) cudaMemcpyAsync(c1, c0, bytes, cudaMemcpyDeviceToDevice, s);
    cudaEventRecord(e1, s); cudaEventSynchronize(e1);
    float ms; cudaEventElapsedTime(&ms, e0, e1);
    printf("copy bandwidth %.0f GB/s (read + write)\n", 2.0 * bytes * 5 / (ms * 1e6));
    printf("error: %s\n", cudaGetErrorString(cudaGetLastError()));
}
