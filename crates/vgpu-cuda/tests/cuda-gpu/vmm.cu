// Kernels on memory mapped with the virtual memory management API, as PyTorch's expandable
// segments grow it: one reservation, handles of one granule each mapped one after the other as
// the segment grows, a kernel running over all of them (across the handles' boundaries), a
// shrink that unmaps and releases the top handle and a grow that maps a new one. The results
// are checked against the CPU and printed as `result:` lines, which must be the same on
// NVIDIA's driver and through vgpu (the GPU host's `cargo xtask gpu-check` stage `cuda`).
#include <cstdio>
#include <cstring>
#include <vector>
#include <cuda.h>
#include <cuda_runtime.h>
#include "check.h"
#include "driver.h"

__global__ void fill(unsigned *p, size_t n, unsigned salt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        p[i] = (unsigned)(i * 2654435761u) ^ salt;
}

__global__ void sum(const unsigned *p, size_t n, unsigned long long *out) {
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        s += p[i];
    atomicAdd(out, s);
}

static decltype(&cuMemGetAllocationGranularity) granularity;
static decltype(&cuMemAddressReserve) addressReserve;
static decltype(&cuMemAddressFree) addressFree;
static decltype(&cuMemCreate) memCreate;
static decltype(&cuMemRelease) memRelease;
static decltype(&cuMemMap) memMap;
static decltype(&cuMemUnmap) memUnmap;
static decltype(&cuMemSetAccess) setAccess;

static unsigned long long cpu_sum(size_t n, unsigned salt) {
    unsigned long long s = 0;
    for (size_t i = 0; i < n; i++) s += (unsigned)(i * 2654435761u) ^ salt;
    return s;
}

int main() {
    OK(cudaFree(0));
    bool ok = entry("cuMemGetAllocationGranularity", &granularity) &&
              entry("cuMemAddressReserve", &addressReserve) &&
              entry("cuMemAddressFree", &addressFree) && entry("cuMemCreate", &memCreate) &&
              entry("cuMemRelease", &memRelease) && entry("cuMemMap", &memMap) &&
              entry("cuMemUnmap", &memUnmap) && entry("cuMemSetAccess", &setAccess);
    if (!ok) return finish();
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemAccessDesc rw;
    memset(&rw, 0, sizeof rw);
    rw.location = prop.location;
    rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    size_t g = 0;
    DRV(granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    if (g == 0) return finish();
    printf("result: granularity %zu\n", g);

    // Grow a segment of up to 8 granules, one handle each.
    const int max = 8;
    CUdeviceptr va = 0;
    DRV(addressReserve(&va, max * g, 0, 0, 0));
    std::vector<CUmemGenericAllocationHandle> h(max);
    unsigned long long *dsum = nullptr;
    OK(cudaMalloc(&dsum, sizeof *dsum));
    int mapped = 0;
    auto grow = [&](int to) {
        for (; mapped < to; mapped++) {
            DRV(memCreate(&h[mapped], g, &prop, 0));
            DRV(memMap(va + mapped * g, g, 0, h[mapped], 0));
            DRV(setAccess(va + mapped * g, g, &rw, 1));
        }
    };
    auto shrink = [&](int to) {
        OK(cudaDeviceSynchronize());
        for (; mapped > to; mapped--) {
            DRV(memUnmap(va + (mapped - 1) * g, g));
            DRV(memRelease(h[mapped - 1]));
        }
    };
    auto check = [&](unsigned salt) {
        size_t n = mapped * g / sizeof(unsigned);
        fill<<<132, 256>>>((unsigned *)va, n, salt);
        OK(cudaMemset(dsum, 0, sizeof *dsum));
        sum<<<132, 256>>>((const unsigned *)va, n, dsum);
        OK(cudaGetLastError());
        unsigned long long got = 0;
        OK(cudaMemcpy(&got, dsum, sizeof got, cudaMemcpyDeviceToHost));
        // The last word of each handle, read back through the runtime.
        int bad = got != cpu_sum(n, salt);
        for (int k = 0; k < mapped; k++) {
            unsigned w = 0;
            size_t i = (k + 1) * g / sizeof(unsigned) - 1;
            OK(cudaMemcpy(&w, (unsigned *)va + i, 4, cudaMemcpyDeviceToHost));
            bad += w != ((unsigned)(i * 2654435761u) ^ salt);
        }
        printf("result: %d granules, sum %llu, %d mismatches\n", mapped, got, bad);
        CHECK(bad == 0);
    };
    grow(3);
    check(0x1234u);
    grow(8);
    check(0xabcdu);
    shrink(5);
    check(0x77u);
    grow(6);
    check(0x5a5au);
    shrink(0);
    DRV(addressFree(va, max * g));
    OK(cudaFree(dsum));
    return finish();
}
