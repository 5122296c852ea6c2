// The CUDA runtime on vgpu's libcuda.so.1 without user kernels: start-up, device queries,
// allocations, copies, memsets, streams, events, pinned memory, pointer attributes and error
// paths. Prints PASS as its last line when every check held (run by `cargo xtask
// cuda-programs` against vgpud's cpu backend; on a GPU host the same binary runs natively).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"


int main() {
    int rt = 0, drv = 0, n = 0;
    OK(cudaRuntimeGetVersion(&rt));
    OK(cudaDriverGetVersion(&drv));
    CHECK(drv >= 13000);
    OK(cudaGetDeviceCount(&n));
    CHECK(n == 1);
    cudaDeviceProp p;
    OK(cudaGetDeviceProperties(&p, 0));
    CHECK(p.major >= 7);
    CHECK(strlen(p.name) > 0);
    CHECK(p.totalGlobalMem > 0);
    CHECK(p.warpSize == 32);
    CHECK(p.maxThreadsPerBlock == 1024);
    CHECK(p.multiProcessorCount > 0);
    printf("device: %s, cc %d.%d, %d SMs, %zu MiB\n", p.name, p.major, p.minor,
           p.multiProcessorCount, p.totalGlobalMem >> 20);
    int v = 0;
    OK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0));
    CHECK(v == p.major);
    char bus[32];
    OK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
    CHECK(strlen(bus) == 12);
    FAILS_WITH(cudaSetDevice(1), cudaErrorInvalidDevice);
    OK(cudaSetDevice(0));
    size_t free_b = 0, total_b = 0;
    OK(cudaMemGetInfo(&free_b, &total_b));
    CHECK(total_b == p.totalGlobalMem);
    CHECK(free_b <= total_b);

    // Allocations, copies, memsets.
    const size_t N = 1 << 18;  // floats: 1 MiB
    std::vector<float> h(N), back(N);
    for (size_t i = 0; i < N; i++) h[i] = (float)i * 0.25f;
    float *a = nullptr, *b = nullptr;
    OK(cudaMalloc(&a, N * sizeof(float)));
    OK(cudaMalloc(&b, N * sizeof(float)));
    CHECK(a != nullptr && b != nullptr && a != b);
    // What is free shrinks by at least what was allocated (CuPy's and PyTorch's allocators
    // size their pools by it).
    size_t free_after = 0;
    OK(cudaMemGetInfo(&free_after, &total_b));
    CHECK(free_b >= 2 * N * sizeof(float) && free_after <= free_b - 2 * N * sizeof(float));
    OK(cudaMemcpy(a, h.data(), N * sizeof(float), cudaMemcpyHostToDevice));
    OK(cudaMemcpy(b, a, N * sizeof(float), cudaMemcpyDeviceToDevice));
    OK(cudaMemcpy(back.data(), b, N * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(memcmp(back.data(), h.data(), N * sizeof(float)) == 0);
    OK(cudaMemset(b, 0xab, N * sizeof(float)));
    OK(cudaMemcpy(back.data(), b, 64, cudaMemcpyDefault));
    CHECK(((unsigned char *)back.data())[63] == 0xab);

    // Streams and events.
    cudaStream_t s1, s2;
    OK(cudaStreamCreate(&s1));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    unsigned int flags = 7;
    OK(cudaStreamGetFlags(s2, &flags));
    CHECK(flags == cudaStreamNonBlocking);
    int lo = 1, hi = 1;
    OK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CHECK(lo >= hi);
    cudaEvent_t e0, e1;
    OK(cudaEventCreate(&e0));
    OK(cudaEventCreate(&e1));
    OK(cudaEventRecord(e0, s1));
    OK(cudaMemcpyAsync(a, h.data(), N * sizeof(float), cudaMemcpyHostToDevice, s1));
    OK(cudaMemsetAsync(b, 0, N * sizeof(float), s2));
    OK(cudaMemcpyAsync(b, a, N * sizeof(float) / 2, cudaMemcpyDeviceToDevice, s1));
    OK(cudaEventRecord(e1, s1));
    OK(cudaStreamWaitEvent(s2, e1, 0));
    OK(cudaEventSynchronize(e1));
    OK(cudaEventQuery(e1));
    float ms = -1;
    OK(cudaEventElapsedTime(&ms, e0, e1));
    CHECK(ms >= 0);
    OK(cudaStreamSynchronize(s2));
    OK(cudaStreamQuery(s1));
    OK(cudaMemcpyAsync(back.data(), b, N * sizeof(float), cudaMemcpyDeviceToHost, s2));
    OK(cudaStreamSynchronize(s2));
    CHECK(memcmp(back.data(), h.data(), N * sizeof(float) / 2) == 0);
    CHECK(back[N - 1] == 0.0f);
    cudaEvent_t nt;
    OK(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming));
    OK(cudaEventRecord(nt, 0));
    FAILS_WITH(cudaEventElapsedTime(&ms, e0, nt), cudaErrorInvalidResourceHandle);
    OK(cudaEventDestroy(nt));

    // Pinned memory and pointer attributes.
    float *pinned = nullptr;
    OK(cudaMallocHost(&pinned, N * sizeof(float)));
    CHECK(pinned != nullptr);
    for (size_t i = 0; i < N; i++) pinned[i] = 1.0f + (float)i;
    OK(cudaMemcpyAsync(a, pinned, N * sizeof(float), cudaMemcpyHostToDevice, s1));
    OK(cudaMemcpyAsync(back.data(), a, N * sizeof(float), cudaMemcpyDeviceToHost, s1));
    OK(cudaStreamSynchronize(s1));
    CHECK(back[N - 1] == 1.0f + (float)(N - 1));
    cudaPointerAttributes at;
    OK(cudaPointerGetAttributes(&at, a + 5));
    CHECK(at.type == cudaMemoryTypeDevice);
    CHECK(at.device == 0);
    OK(cudaPointerGetAttributes(&at, pinned));
    CHECK(at.type == cudaMemoryTypeHost);
    OK(cudaPointerGetAttributes(&at, h.data()));
    CHECK(at.type == cudaMemoryTypeUnregistered);
    OK(cudaFreeHost(pinned));

    // Error paths: the call fails, nothing else does.
    void *huge = nullptr;
    FAILS_WITH(cudaMalloc(&huge, (size_t)1 << 45), cudaErrorMemoryAllocation);
    FAILS_WITH(cudaGetLastError(), cudaErrorMemoryAllocation);
    OK(cudaGetLastError());
    FAILS_WITH(cudaMemcpy(a + N - 1, h.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    FAILS_WITH(cudaGetLastError(), cudaErrorInvalidValue);
    OK(cudaGetLastError());
    OK(cudaMemcpy(back.data(), a, 16, cudaMemcpyDeviceToHost));

    OK(cudaEventDestroy(e0));
    OK(cudaEventDestroy(e1));
    OK(cudaStreamDestroy(s1));
    OK(cudaStreamDestroy(s2));
    OK(cudaFree(a));
    OK(cudaFree(b));
    OK(cudaDeviceSynchronize());
    return finish();
}
