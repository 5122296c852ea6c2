// cudaLaunchKernelEx (the runtime's cuLaunchKernelEx) with a launch configuration and a
// priority attribute, on a stream, next to a plain launch. `result:` lines must match native.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void fill(int *out, int base, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = base + i;
}

int main() {
    const int n = 4096;
    int *d = nullptr;
    OK(cudaMalloc(&d, 2 * n * sizeof(int)));
    cudaStream_t s;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(n / 128);
    cfg.blockDim = dim3(128);
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributePriority;
    attr[0].val.priority = 0;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    OK(cudaLaunchKernelEx(&cfg, fill, d, 7, n));
    cfg.numAttrs = 0;
    OK(cudaLaunchKernelEx(&cfg, fill, d + n, 1000, n));
    OK(cudaStreamSynchronize(s));
    static int h[2 * 4096];
    OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    long long sum = 0;
    for (int i = 0; i < 2 * n; i++) sum += h[i];
    printf("result: sum %lld, first %d, last %d\n", sum, h[0], h[2 * n - 1]);
    CHECK(h[0] == 7 && h[n] == 1000 && h[2 * n - 1] == 1000 + n - 1);
    OK(cudaFree(d));
    return finish();
}
