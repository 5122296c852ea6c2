// Virtual memory management through the driver API from a runtime program, without kernels,
// as XLA's and PyTorch's (expandable segments) allocators use it: the device attribute, the
// granularity, an address reservation backed by two handles mapped side by side and made
// read-write, the runtime's copies, memsets and pointer queries on the mapped range (across
// the two handles too), cuMemRetainAllocationHandle, and the teardown in the order a
// framework does it. Prints PASS as its last line when every check held (run by
// `cargo xtask cuda-programs` against vgpud's cpu backend; on a GPU host the same binary runs
// natively).
#include <cstdio>
#include <cstring>
#include <vector>
#include <cuda.h>
#include <cuda_runtime.h>
#include "check.h"
#include "driver.h"

// The driver entry points, as the runtime hands them out (the program does not link libcuda).
static decltype(&cuDeviceGetAttribute) getAttribute;
static decltype(&cuMemGetAllocationGranularity) granularity;
static decltype(&cuMemAddressReserve) addressReserve;
static decltype(&cuMemAddressFree) addressFree;
static decltype(&cuMemCreate) memCreate;
static decltype(&cuMemRelease) memRelease;
static decltype(&cuMemMap) memMap;
static decltype(&cuMemUnmap) memUnmap;
static decltype(&cuMemSetAccess) setAccess;
static decltype(&cuMemGetAccess) getAccess;
static decltype(&cuMemRetainAllocationHandle) retainHandle;
static decltype(&cuMemGetAllocationPropertiesFromHandle) propsOf;
static decltype(&cuMemGetAddressRange) addressRange;

static bool entries() {
    bool ok = true;
    ok &= entry("cuDeviceGetAttribute", &getAttribute);
    ok &= entry("cuMemGetAllocationGranularity", &granularity);
    ok &= entry("cuMemAddressReserve", &addressReserve);
    ok &= entry("cuMemAddressFree", &addressFree);
    ok &= entry("cuMemCreate", &memCreate);
    ok &= entry("cuMemRelease", &memRelease);
    ok &= entry("cuMemMap", &memMap);
    ok &= entry("cuMemUnmap", &memUnmap);
    ok &= entry("cuMemSetAccess", &setAccess);
    ok &= entry("cuMemGetAccess", &getAccess);
    ok &= entry("cuMemRetainAllocationHandle", &retainHandle);
    ok &= entry("cuMemGetAllocationPropertiesFromHandle", &propsOf);
    ok &= entry("cuMemGetAddressRange", &addressRange);
    return ok;
}

static CUmemAllocationProp pinned() {
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = 0;
    return p;
}

int main() {
    OK(cudaFree(0));
    if (!entries()) return finish();
    int vmm = 0;
    DRV(getAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    CHECK(vmm == 1);

    CUmemAllocationProp prop = pinned();
    size_t g = 0, rec = 0;
    DRV(granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    DRV(granularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    CHECK(g == (2u << 20) && rec % g == 0);
    if (g == 0) return finish();

    // Reserve four granules; back three with a one-granule and a two-granule handle.
    CUdeviceptr va = 0;
    DRV(addressReserve(&va, 4 * g, 0, 0, 0));
    CHECK(va != 0 && va % g == 0);
    CUmemGenericAllocationHandle h1 = 0, h2 = 0;
    DRV_IS(memCreate(&h1, g + 1, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    DRV(memCreate(&h1, g, &prop, 0));
    DRV(memCreate(&h2, 2 * g, &prop, 0));
    size_t free_b = 0, total_b = 0;
    OK(cudaMemGetInfo(&free_b, &total_b));
    size_t used_before_maps = total_b - free_b;
    CHECK(used_before_maps >= 3 * g);
    DRV(memMap(va, g, 0, h1, 0));
    DRV(memMap(va + g, 2 * g, 0, h2, 0));
    DRV_FAILS(memMap(va + 2 * g, g, 0, h1, 0));  // overlaps h2's
    CUmemAccessDesc rw;
    memset(&rw, 0, sizeof rw);
    rw.location = prop.location;
    rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    DRV(setAccess(va, 3 * g, &rw, 1));
    unsigned long long flags = 0;
    DRV(getAccess(&flags, &prop.location, va + g + 5));
    CHECK(flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE);

    // The runtime's copies and memsets on the mapped range, across the two handles.
    void *at = (void *)(va + g - 4096);
    std::vector<unsigned char> data(8192), back(8192);
    for (size_t i = 0; i < data.size(); i++) data[i] = (unsigned char)(i * 13 + 1);
    OK(cudaMemcpy(at, data.data(), data.size(), cudaMemcpyHostToDevice));
    OK(cudaMemcpy(back.data(), at, back.size(), cudaMemcpyDefault));
    CHECK(back == data);
    OK(cudaMemset((void *)(va + g - 2), 0xEE, 4));
    unsigned char four[4] = {0, 0, 0, 0};
    OK(cudaMemcpy(four, (void *)(va + g - 2), 4, cudaMemcpyDeviceToHost));
    CHECK(four[0] == 0xEE && four[3] == 0xEE);
    void *plain = nullptr;
    OK(cudaMalloc(&plain, 8192));
    OK(cudaMemcpy(plain, at, 8192, cudaMemcpyDeviceToDevice));
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    OK(cudaMemcpyAsync(at, plain, 4096, cudaMemcpyDefault, s));
    OK(cudaMemsetAsync((void *)(va + 3 * g - 16), 0x5A, 16, s));
    OK(cudaStreamSynchronize(s));
    OK(cudaMemcpy(back.data(), plain, 8192, cudaMemcpyDeviceToHost));
    CHECK(memcmp(back.data(), data.data(), 4094) == 0);
    OK(cudaMemcpy(four, (void *)(va + 3 * g - 4), 4, cudaMemcpyDeviceToHost));
    CHECK(four[0] == 0x5A && four[3] == 0x5A);

    // Pointer queries see device memory: the mapping holding the address.
    cudaPointerAttributes pa;
    OK(cudaPointerGetAttributes(&pa, (void *)(va + g + 100)));
    CHECK(pa.type == cudaMemoryTypeDevice && pa.device == 0);
    CUdeviceptr base = 0;
    size_t size = 0;
    DRV(addressRange(&base, &size, va + g + 7));
    CHECK(base == va + g && size == 2 * g);

    // What was asked for, and one more reference through the address.
    CUmemAllocationProp got;
    memset(&got, 0xff, sizeof got);
    DRV(propsOf(&got, h2));
    CHECK(got.type == CU_MEM_ALLOCATION_TYPE_PINNED &&
          got.location.type == CU_MEM_LOCATION_TYPE_DEVICE && got.location.id == 0);
    CUmemGenericAllocationHandle r = 0;
    DRV(retainHandle(&r, (void *)(va + 3)));
    CHECK(r == h1);
    DRV(memRelease(r));

    // Teardown as a framework does it: release the handles (the mappings keep the memory),
    // unmap, free the addresses.
    OK(cudaDeviceSynchronize());
    DRV(memRelease(h1));
    DRV(memRelease(h2));
    OK(cudaMemcpy(four, (void *)va, 4, cudaMemcpyDeviceToHost));  // still mapped
    DRV_FAILS(memUnmap(va, 2 * g));                               // part of h2's mapping
    DRV(memUnmap(va, g));
    DRV(memUnmap(va + g, 2 * g));
    DRV(addressFree(va, 4 * g));
    OK(cudaFree(plain));
    OK(cudaStreamDestroy(s));
    OK(cudaMemGetInfo(&free_b, &total_b));
    CHECK(total_b - free_b + 3 * g <= used_before_maps + g);  // the handles' memory is back
    return finish();
}
