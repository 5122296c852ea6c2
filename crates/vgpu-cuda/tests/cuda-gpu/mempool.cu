// Stream-ordered allocation with kernels that take their time: memory freed with
// cudaFreeAsync behind a slow kernel must not be handed to other work before that kernel is
// done. Rounds on one stream (allocate, fill slowly, check, free), then across two streams
// (allocate on s1, fill there, check slowly on s2 behind an event, free on s2, allocate on s1
// at once and overwrite): any reuse too early shows as wrong values in a check. `result:`
// lines must match the native run.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__device__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}

__global__ void fill(int* p, int n, int v, unsigned long long ns) {
    spin(ns);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = v;
}

// Counts the elements that are not `v`, after waiting `ns` (so that a reuse of the memory by
// later work has time to land first).
__global__ void count_wrong(const int* p, int n, int v, unsigned long long ns,
                            unsigned long long* wrong) {
    spin(ns);
    unsigned long long mine = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        mine += p[i] != v;
    if (mine) atomicAdd(wrong, mine);
}

int main() {
    const int n = 1 << 20;
    const size_t bytes = n * sizeof(int);
    const unsigned long long ms = 1000ull * 1000;
    unsigned long long* wrong = nullptr;
    OK(cudaMalloc(&wrong, 2 * sizeof(unsigned long long)));
    OK(cudaMemset(wrong, 0, 2 * sizeof(unsigned long long)));
    cudaStream_t s1, s2;
    OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t filled;
    OK(cudaEventCreateWithFlags(&filled, cudaEventDisableTiming));

    // One stream: every round's memory is checked before the stream frees it.
    for (int r = 0; r < 40; r++) {
        int* a = nullptr;
        OK(cudaMallocAsync(&a, bytes, s1));
        fill<<<64, 256, 0, s1>>>(a, n, r, ms / 2);
        count_wrong<<<64, 256, 0, s1>>>(a, n, r, 0, wrong);
        OK(cudaFreeAsync(a, s1));
    }
    // Two streams: the check on s2 waits 2 ms before it reads; meanwhile s1 allocates again
    // and overwrites what it gets.
    for (int r = 0; r < 40; r++) {
        int* a = nullptr;
        OK(cudaMallocAsync(&a, bytes, s1));
        fill<<<64, 256, 0, s1>>>(a, n, 1000 + r, 0);
        OK(cudaEventRecord(filled, s1));
        OK(cudaStreamWaitEvent(s2, filled, 0));
        count_wrong<<<64, 256, 0, s2>>>(a, n, 1000 + r, 2 * ms, wrong + 1);
        OK(cudaFreeAsync(a, s2));
        int* b = nullptr;
        OK(cudaMallocAsync(&b, bytes, s1));
        fill<<<64, 256, 0, s1>>>(b, n, -1, 0);
        OK(cudaFreeAsync(b, s1));
    }
    OK(cudaDeviceSynchronize());
    unsigned long long host[2] = {~0ull, ~0ull};
    OK(cudaMemcpy(host, wrong, sizeof(host), cudaMemcpyDeviceToHost));
    cudaMemPool_t pool;
    OK(cudaDeviceGetDefaultMemPool(&pool, 0));
    unsigned long long used = ~0ull;
    OK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    printf("result: wrong elements: one stream %llu, two streams %llu; pool memory in use after: %llu\n",
           host[0], host[1], used);
    CHECK(host[0] == 0 && host[1] == 0 && used == 0);
    OK(cudaFree(wrong));
    return finish();
}
