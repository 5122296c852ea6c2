// Events while the device is busy: a query right after recording behind a 50 ms kernel is
// not ready, cudaEventSynchronize waits for the kernel, the elapsed time covers it, and a
// synchronous copy into page-locked memory has its bytes when it returns. `result:` lines
// must match the native run.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void spin_then_write(int *out, unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
    out[threadIdx.x] = threadIdx.x + 1;
}

int main() {
    int *d = nullptr, *pinned = nullptr;
    OK(cudaMalloc(&d, 32 * sizeof(int)));
    OK(cudaMallocHost(&pinned, 32 * sizeof(int)));
    OK(cudaMemset(d, 0, 32 * sizeof(int)));
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    cudaEvent_t a, b;
    OK(cudaEventCreate(&a));
    OK(cudaEventCreate(&b));
    OK(cudaEventRecord(a, s));
    spin_then_write<<<1, 32, 0, s>>>(d, 50ull * 1000 * 1000);
    OK(cudaEventRecord(b, s));
    cudaError_t before = cudaEventQuery(b);
    OK(cudaEventSynchronize(b));
    cudaError_t after = cudaEventQuery(b);
    float ms = 0;
    OK(cudaEventElapsedTime(&ms, a, b));
    OK(cudaMemcpy(pinned, d, 32 * sizeof(int), cudaMemcpyDeviceToHost));
    int sum = 0;
    for (int i = 0; i < 32; i++) sum += pinned[i];
    printf("result: query before %s, after %s, elapsed >= 50 ms %d, sum %d\n",
           cudaGetErrorName(before), cudaGetErrorName(after), ms >= 50.0f, sum);
    CHECK(before == cudaErrorNotReady);
    CHECK(after == cudaSuccess);
    CHECK(ms >= 50.0f);
    CHECK(sum == 32 * 33 / 2);
    OK(cudaFreeHost(pinned));
    OK(cudaFree(d));
    return finish();
}
