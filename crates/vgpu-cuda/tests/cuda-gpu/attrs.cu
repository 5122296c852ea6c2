// Function attributes through the runtime (cudaFuncGetAttributes, cudaFuncSetAttribute) and a
// launch with more dynamic shared memory than the 48 KiB default, which needs the attribute
// set first. `result:` lines must match the native run.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void fill_shared(int *out, int n) {
    extern __shared__ int buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i * 3;
    __syncthreads();
    int s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += buf[n - 1 - i];
    atomicAdd(out, s);
}

int main() {
    cudaFuncAttributes a;
    cudaError_t e = cudaFuncGetAttributes(&a, fill_shared);
    if (e) { printf("FAILED cudaFuncGetAttributes: %s\n", cudaGetErrorName(e)); return 1; }
    const int n = 24 * 1024;  // 96 KiB of shared memory
    int *d = nullptr, h = 0;
    cudaMalloc(&d, sizeof(int));
    cudaMemset(d, 0, sizeof(int));
    fill_shared<<<1, 256, n * sizeof(int)>>>(d, n);
    cudaError_t too_big = cudaGetLastError();
    e = cudaFuncSetAttribute(fill_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, n * sizeof(int));
    if (e) { printf("FAILED cudaFuncSetAttribute: %s\n", cudaGetErrorName(e)); return 1; }
    cudaFuncAttributes b;
    cudaFuncGetAttributes(&b, fill_shared);
    fill_shared<<<1, 256, n * sizeof(int)>>>(d, n);
    cudaError_t ok = cudaGetLastError();
    e = cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost);
    long long want = 0;
    for (int i = 0; i < n; i++) want += i * 3;
    printf("result: maxThreads %d, numRegs>0 %d, before %d, after %d, unset launch %s, set launch %s, sum %d want %lld\n",
           a.maxThreadsPerBlock, a.numRegs > 0, a.maxDynamicSharedSizeBytes,
           b.maxDynamicSharedSizeBytes, cudaGetErrorName(too_big), cudaGetErrorName(ok), h, want);
    if (e || ok || h != (int)want) return 1;
    return finish();
}
