// Stream-ordered allocation and memory pools through the runtime, without kernels:
// cudaMallocAsync / cudaFreeAsync on two streams with the runtime's copies and memsets into
// the memory, reuse in stream order (same stream, and another one after a synchronisation),
// many live allocations that never overlap, a pool of the program's own (cudaMemPoolCreate,
// cudaMallocFromPoolAsync, the device's current pool, attributes, its device's access,
// trimming), and cudaFree of memory from cudaMallocAsync. Prints PASS as its last line when
// every check held (run by `cargo xtask cuda-programs` against vgpud's cpu backend; on a GPU
// host the same binary runs natively).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

// Fills `n` bytes at `p` with `v` on `s`, reads them back and checks them.
static bool filled(void* p, size_t n, unsigned char v, cudaStream_t s) {
    std::vector<unsigned char> h(n, 0);
    if (cudaMemsetAsync(p, v, n, s) != cudaSuccess) return false;
    if (cudaMemcpyAsync(h.data(), p, n, cudaMemcpyDeviceToHost, s) != cudaSuccess) return false;
    if (cudaStreamSynchronize(s) != cudaSuccess) return false;
    return std::all_of(h.begin(), h.end(), [v](unsigned char b) { return b == v; });
}

static uint64_t attr(cudaMemPool_t pool, cudaMemPoolAttr a) {
    uint64_t v = ~0ull;
    OK(cudaMemPoolGetAttribute(pool, a, &v));
    return v;
}

int main() {
    int supported = 0;
    OK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
    CHECK(supported == 1);
    cudaMemPool_t def = nullptr, cur = nullptr;
    OK(cudaDeviceGetDefaultMemPool(&def, 0));
    OK(cudaDeviceGetMemPool(&cur, 0));
    CHECK(def != nullptr && cur == def);

    cudaStream_t s1, s2;
    OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));

    // One allocation, written and read in stream order, counted by the pool.
    void* a = nullptr;
    OK(cudaMallocAsync(&a, 1000, s1));
    CHECK(a != nullptr);
    CHECK(filled(a, 1000, 7, s1));
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) >= 1000);
    CHECK(attr(def, cudaMemPoolAttrReservedMemCurrent) >= attr(def, cudaMemPoolAttrUsedMemCurrent));
    OK(cudaFreeAsync(a, s1));
    OK(cudaStreamSynchronize(s1));
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) == 0);
    CHECK(attr(def, cudaMemPoolAttrUsedMemHigh) >= 1000);

    // Freed and allocated again on one stream, then on the other after a synchronisation.
    for (int round = 0; round < 3; round++) {
        void* b = nullptr;
        OK(cudaMallocAsync(&b, 1000, s1));
        CHECK(filled(b, 1000, (unsigned char)(10 + round), s1));
        OK(cudaFreeAsync(b, s1));
        void* c = nullptr;
        OK(cudaMallocAsync(&c, 1000, s2));
        CHECK(filled(c, 1000, (unsigned char)(20 + round), s2));
        OK(cudaFreeAsync(c, s2));
    }
    OK(cudaDeviceSynchronize());

    // Many live allocations of many sizes, allocated on one stream and freed on the other:
    // none overlaps another, and each keeps its own bytes.
    std::vector<std::pair<uintptr_t, size_t>> live;
    std::vector<void*> ptrs;
    for (int i = 0; i < 48; i++) {
        size_t n = 1 + (size_t)i * 5003 % (3 << 20);
        void* p = nullptr;
        OK(cudaMallocAsync(&p, n, i % 2 ? s1 : s2));
        ptrs.push_back(p);
        live.push_back({(uintptr_t)p, n});
        OK(cudaMemsetAsync(p, i + 1, n, i % 2 ? s1 : s2));
    }
    OK(cudaDeviceSynchronize());
    std::vector<std::pair<uintptr_t, size_t>> sorted = live;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 1; i < sorted.size(); i++) {
        CHECK(sorted[i - 1].first + sorted[i - 1].second <= sorted[i].first);
    }
    for (int i = 0; i < 48; i++) {
        unsigned char first = 0, last = 0;
        OK(cudaMemcpy(&first, ptrs[i], 1, cudaMemcpyDeviceToHost));
        OK(cudaMemcpy(&last, (char*)ptrs[i] + live[i].second - 1, 1, cudaMemcpyDeviceToHost));
        CHECK(first == (unsigned char)(i + 1) && last == (unsigned char)(i + 1));
        OK(cudaFreeAsync(ptrs[i], i % 2 ? s2 : s1));
    }
    OK(cudaDeviceSynchronize());
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) == 0);
    // With nothing allocated and every free done, trimming gives everything back.
    OK(cudaMemPoolTrimTo(def, 0));
    CHECK(attr(def, cudaMemPoolAttrReservedMemCurrent) == 0);

    // A pool of the program's own.
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t pool = nullptr;
    OK(cudaMemPoolCreate(&pool, &props));
    CHECK(pool != nullptr && pool != def);
    uint64_t threshold = ~0ull;
    OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    CHECK(attr(pool, cudaMemPoolAttrReleaseThreshold) == ~0ull);
    int reuse = -1;
    OK(cudaMemPoolGetAttribute(pool, cudaMemPoolReuseAllowOpportunistic, &reuse));
    CHECK(reuse == 1);
    // The pool's own device reads and writes it.
    cudaMemAccessFlags flags = cudaMemAccessFlagsProtNone;
    cudaMemLocation loc = {};
    loc.type = cudaMemLocationTypeDevice;
    loc.id = 0;
    OK(cudaMemPoolGetAccess(&flags, pool, &loc));
    CHECK(flags == cudaMemAccessFlagsProtReadWrite);

    void* d = nullptr;
    OK(cudaMallocFromPoolAsync(&d, 4096, pool, s1));
    CHECK(filled(d, 4096, 0x5a, s1));
    CHECK(attr(pool, cudaMemPoolAttrUsedMemCurrent) >= 4096);
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) == 0);
    // The device's current pool is where cudaMallocAsync takes from.
    OK(cudaDeviceSetMemPool(0, pool));
    OK(cudaDeviceGetMemPool(&cur, 0));
    CHECK(cur == pool);
    void* e = nullptr;
    OK(cudaMallocAsync(&e, 8192, s2));
    CHECK(filled(e, 8192, 0x33, s2));
    CHECK(attr(pool, cudaMemPoolAttrUsedMemCurrent) >= 4096 + 8192);
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) == 0);
    OK(cudaDeviceSetMemPool(0, def));
    OK(cudaFreeAsync(d, s1));
    OK(cudaFreeAsync(e, s2));
    OK(cudaDeviceSynchronize());
    CHECK(attr(pool, cudaMemPoolAttrUsedMemCurrent) == 0);
    OK(cudaMemPoolTrimTo(pool, 0));
    CHECK(attr(pool, cudaMemPoolAttrReservedMemCurrent) == 0);
    uint64_t zero = 0;
    OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
    CHECK(attr(pool, cudaMemPoolAttrUsedMemHigh) == 0);
    OK(cudaMemPoolDestroy(pool));

    // Once the device is full, memory freed to the pool serves a request of another size.
    std::vector<void*> big;
    for (int i = 0; i < 20000; i++) {
        void* p = nullptr;
        if (cudaMallocAsync(&p, 32 << 20, s1) != cudaSuccess) break;
        big.push_back(p);
    }
    cudaGetLastError();
    CHECK(big.size() >= 2);
    for (void* p : big) OK(cudaFreeAsync(p, s1));
    OK(cudaStreamSynchronize(s1));
    void* other = nullptr;
    OK(cudaMallocAsync(&other, 48 << 20, s2));
    CHECK(filled(other, 48 << 20, 0x44, s2));
    OK(cudaFreeAsync(other, s2));
    OK(cudaStreamSynchronize(s2));

    // cudaFree of memory from cudaMallocAsync, once its work is done.
    void* f = nullptr;
    OK(cudaMallocAsync(&f, 1 << 20, s1));
    CHECK(filled(f, 1 << 20, 0x11, s1));
    OK(cudaFree(f));
    CHECK(attr(def, cudaMemPoolAttrUsedMemCurrent) == 0);

    OK(cudaStreamDestroy(s1));
    OK(cudaStreamDestroy(s2));
    return finish();
}
