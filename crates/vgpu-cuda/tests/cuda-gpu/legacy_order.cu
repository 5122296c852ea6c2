// The legacy default stream's implicit synchronisation behind real kernels: a 20 ms kernel on a
// blocking stream, then a copy on the legacy stream with no synchronisation in between, must
// copy what the kernel wrote (and the other way round); 300 streams each run a kernel, and one
// synchronous copy on the legacy stream sees all of them. Without the implicit waits the copies
// would read what was there before. `result:` lines must match the native run.
#include <cstdio>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

__global__ void spin_then_fill(int *out, int v, unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
    out[threadIdx.x] = v + threadIdx.x;
}

// The sum of `n` ints at `d`, read through the legacy stream (a synchronous copy).
static long long sum(const int *d, int n) {
    std::vector<int> h(n);
    OK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
    long long s = 0;
    for (int x : h) s += x;
    return s;
}

int main() {
    const unsigned long long ms20 = 20ull * 1000 * 1000;
    int *a = nullptr, *b = nullptr;
    OK(cudaMalloc(&a, 32 * sizeof(int)));
    OK(cudaMalloc(&b, 32 * sizeof(int)));
    OK(cudaMemset(a, 0, 32 * sizeof(int)));
    OK(cudaMemset(b, 0, 32 * sizeof(int)));
    cudaStream_t s1, s2;
    OK(cudaStreamCreate(&s1));
    OK(cudaStreamCreate(&s2));

    // Blocking stream → legacy stream.
    spin_then_fill<<<1, 32, 0, s1>>>(a, 100, ms20);
    OK(cudaGetLastError());
    OK(cudaMemcpyAsync(b, a, 32 * sizeof(int), cudaMemcpyDeviceToDevice, 0));
    long long to_legacy = sum(b, 32);
    // Legacy stream → blocking stream.
    spin_then_fill<<<1, 32, 0, 0>>>(a, 1000, ms20);
    OK(cudaMemcpyAsync(b, a, 32 * sizeof(int), cudaMemcpyDeviceToDevice, s2));
    OK(cudaStreamSynchronize(s2));
    long long from_legacy = sum(b, 32);
    // Blocking → legacy → blocking: s1's kernel, a legacy copy, then s2's copy.
    spin_then_fill<<<1, 32, 0, s1>>>(a, 5000, ms20);
    OK(cudaMemcpyAsync(b, a, 32 * sizeof(int), cudaMemcpyDeviceToDevice, cudaStreamLegacy));
    OK(cudaMemcpyAsync(a, b, 16 * sizeof(int), cudaMemcpyDeviceToDevice, s2));
    OK(cudaStreamSynchronize(s2));
    long long through = sum(a, 32);

    // 300 streams, each a short kernel filling its own slice; one legacy copy sees them all.
    const int S = 300;
    int *many_out = nullptr;
    OK(cudaMalloc(&many_out, S * 32 * sizeof(int)));
    OK(cudaMemset(many_out, 0, S * 32 * sizeof(int)));
    std::vector<cudaStream_t> many(S);
    for (int i = 0; i < S; i++) OK(cudaStreamCreate(&many[i]));
    for (int i = 0; i < S; i++)
        spin_then_fill<<<1, 32, 0, many[i]>>>(many_out + i * 32, i, 100 * 1000);
    OK(cudaGetLastError());
    long long all = sum(many_out, S * 32);
    for (int i = 0; i < S; i++) OK(cudaStreamDestroy(many[i]));

    printf("result: to legacy %lld, from legacy %lld, through %lld, 300 streams %lld\n",
           to_legacy, from_legacy, through, all);
    CHECK(to_legacy == 32 * 100 + 31 * 32 / 2);
    CHECK(from_legacy == 32 * 1000 + 31 * 32 / 2);
    CHECK(through == 32 * 5000 + 31 * 32 / 2);
    CHECK(all == 32LL * (S - 1) * S / 2 + S * (31 * 32 / 2));
    OK(cudaStreamDestroy(s1));
    OK(cudaStreamDestroy(s2));
    OK(cudaFree(many_out));
    OK(cudaFree(a));
    OK(cudaFree(b));
    return finish();
}
