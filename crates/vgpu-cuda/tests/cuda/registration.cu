// The runtime's kernel registration on vgpu's libcuda.so.1, without running a kernel: the
// fatbin is loaded lazily (at the first use of a kernel) or eagerly (CUDA_MODULE_LOADING=EAGER),
// compressed or not, relocatable (-rdc) or not; attributes come from the image; a 32 KiB
// parameter kernel and a C++ template are found. Prints PASS when every check held.
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>
#include "check.h"


struct Big { char bytes[32000]; };

__global__ void __launch_bounds__(128) bounded(float *x) { x[threadIdx.x] *= 2.0f; }
__global__ void big_param(const __grid_constant__ Big b, char *out) { out[threadIdx.x] = b.bytes[threadIdx.x]; }
__global__ void with_shared(int *o) {
    __shared__ int tile[1024];
    tile[threadIdx.x] = threadIdx.x;
    __syncthreads();
    o[threadIdx.x] = tile[1023 - threadIdx.x];
}
template <typename T> __global__ void axpy(T a, const T *x, T *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
__device__ int counter;

int main() {
    int n = 0;
    OK(cudaGetDeviceCount(&n));
    CHECK(n == 1);
    cudaFuncAttributes a;
    OK(cudaFuncGetAttributes(&a, bounded));
    CHECK(a.maxThreadsPerBlock == 128);
    OK(cudaFuncGetAttributes(&a, big_param));
    CHECK(a.maxThreadsPerBlock > 0);
    OK(cudaFuncGetAttributes(&a, with_shared));
    CHECK(a.sharedSizeBytes >= 4096);
    int before = a.maxDynamicSharedSizeBytes;
    OK(cudaFuncSetAttribute(with_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
    OK(cudaFuncGetAttributes(&a, with_shared));
    CHECK(a.maxDynamicSharedSizeBytes == 64 * 1024);
    CHECK(before < 64 * 1024);
    OK(cudaFuncGetAttributes(&a, axpy<float>));
    CHECK(a.maxThreadsPerBlock > 0);
    OK(cudaFuncGetAttributes(&a, axpy<double>));
    CHECK(a.maxThreadsPerBlock > 0);
    // An attribute that cannot be set is refused at the call.
    CHECK(cudaFuncSetAttribute(bounded, cudaFuncAttributeMaxDynamicSharedMemorySize, 1 << 30) != cudaSuccess);
    cudaGetLastError();
    return finish();
}
