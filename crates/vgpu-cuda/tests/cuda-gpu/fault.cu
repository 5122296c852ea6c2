// A kernel that writes through a bad pointer: the error surfaces at the next synchronising call
// and stays (sticky) for every later call, as on NVIDIA's driver. `result:` lines must match.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void bad_write(int *p) { p[threadIdx.x] = 1; }

int main() {
    int *ok = nullptr;
    cudaError_t e = cudaMalloc(&ok, 1024);
    if (e != cudaSuccess) { printf("FAILED cudaMalloc: %s\n", cudaGetErrorName(e)); return 1; }
    bad_write<<<1, 32>>>((int *)0x10);
    cudaError_t launch = cudaGetLastError();
    cudaError_t sync = cudaDeviceSynchronize();
    int *more = nullptr;
    cudaError_t after = cudaMalloc(&more, 1024);
    printf("result: launch %s, sync %s, after %s\n", cudaGetErrorName(launch),
           cudaGetErrorName(sync), cudaGetErrorName(after));
    if (launch != cudaSuccess || sync == cudaSuccess || after == cudaSuccess) return 1;
    return finish();
}
