// Which shared-memory configuration does a carveout percent give (RESULTS log 45)? Blocks of
// 31 KB a multiprocessor holds for each percent (occupancy API); run under ncu with
// --metrics launch__shared_mem_config_size for what ncu reports of the launch attribute.
// Build and run on the GPU machine: nvcc -O2 -arch=sm_90 -o carve carve.cu && ./carve
#include <cstdio>
#include <cuda_runtime.h>
__global__ void k(float* o) { extern __shared__ float s[]; s[threadIdx.x] = threadIdx.x; __syncthreads(); if (o) o[0] = s[5]; }
int main() {
  const int dyn = 30 * 1024;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn);
  int ps[] = {0, 10, 20, 28, 29, 30, 40, 43, 44, 45, 50, 51, 56, 57, 58, 59, 64, 65, 70, 71, 72, 73, 85, 86, 87, 100};
  for (int p : ps) {
    cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, p);
    int blocks = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k, 32, dyn);
    printf("func-attr %3d%% -> %d blocks of 31 KB\n", p, blocks);
  }
  cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, -1);
  for (int p : ps) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(1); cfg.blockDim = dim3(32); cfg.dynamicSmemBytes = dyn;
    cudaLaunchAttribute a[1];
    a[0].id = cudaLaunchAttributePreferredSharedMemoryCarveout; a[0].val.sharedMemCarveout = p;
    cfg.attrs = a; cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, k, (float*)nullptr);
  }
  cudaDeviceSynchronize();
  printf("done %s\n", cudaGetErrorString(cudaGetLastError()));
}
