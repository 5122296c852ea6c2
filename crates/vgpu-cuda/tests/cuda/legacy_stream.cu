// The legacy default stream's implicit synchronisation, through the CUDA runtime: work on the
// legacy stream (0, cudaStreamLegacy) follows the earlier work of every blocking stream, work on
// a blocking stream (cudaStreamCreate, the per-thread default stream) follows the legacy
// stream's earlier work, and streams created with cudaStreamNonBlocking take no part. Shown by
// data: each copy reads what the other stream wrote just before, with no synchronisation in
// between. Then 300 streams at once, each with its own work, joined by one legacy copy.
// Prints PASS as its last line when every check held (run by `cargo xtask cuda-programs`
// against vgpud's cpu backend; on a GPU host the same binary runs natively).
#include <cstdio>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

static const size_t N = 1 << 16;

// Whether every byte of `p[0..n)` is `v`.
static bool all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return false;
    return true;
}

// The device bytes `d[0..n)` read back through the legacy stream (synchronous copy).
static std::vector<unsigned char> fetch(const void *d, size_t n) {
    std::vector<unsigned char> h(n);
    OK(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost));
    return h;
}

int main() {
    unsigned char *a = nullptr, *b = nullptr, *c = nullptr;
    OK(cudaMalloc(&a, N));
    OK(cudaMalloc(&b, N));
    OK(cudaMalloc(&c, N));
    OK(cudaMemset(a, 0, N));
    OK(cudaMemset(b, 0, N));
    OK(cudaMemset(c, 0, N));

    cudaStream_t s1, s2, nb;
    OK(cudaStreamCreate(&s1));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamDefault));
    OK(cudaStreamCreateWithFlags(&nb, cudaStreamNonBlocking));
    unsigned int flags = 7;
    OK(cudaStreamGetFlags(s1, &flags));
    CHECK(flags == cudaStreamDefault);
    OK(cudaStreamGetFlags(nb, &flags));
    CHECK(flags == cudaStreamNonBlocking);

    // Blocking stream, then the legacy stream: the copy sees the memset.
    OK(cudaMemsetAsync(a, 0x11, N, s1));
    OK(cudaMemcpyAsync(b, a, N, cudaMemcpyDeviceToDevice, 0));
    CHECK(all(fetch(b, N).data(), N, 0x11));

    // The legacy stream, then a blocking stream: the copy on s2 sees the legacy memset.
    OK(cudaMemsetAsync(a, 0x22, N, 0));
    OK(cudaMemcpyAsync(c, a, N, cudaMemcpyDeviceToDevice, s2));
    OK(cudaStreamSynchronize(s2));
    CHECK(all(fetch(c, N).data(), N, 0x22));

    // Two blocking streams through the legacy stream: s1 → legacy → s2.
    OK(cudaMemsetAsync(a, 0x33, N, s1));
    OK(cudaMemcpyAsync(b, a, N, cudaMemcpyDeviceToDevice, cudaStreamLegacy));
    OK(cudaMemcpyAsync(c, b, N, cudaMemcpyDeviceToDevice, s2));
    OK(cudaStreamSynchronize(s2));
    CHECK(all(fetch(c, N).data(), N, 0x33));

    // The classic pattern: work on a stream, then a synchronous copy to the host, no
    // synchronisation in between.
    OK(cudaMemsetAsync(a, 0x44, N, s1));
    OK(cudaMemcpyAsync(b, a, N / 2, cudaMemcpyDeviceToDevice, s1));
    std::vector<unsigned char> h = fetch(b, N);
    CHECK(all(h.data(), N / 2, 0x44) && all(h.data() + N / 2, N / 2, 0x33));

    // Into page-locked memory, asynchronously on the legacy stream.
    unsigned char *pinned = nullptr;
    OK(cudaMallocHost(&pinned, N));
    memset(pinned, 0, N);
    OK(cudaMemsetAsync(c, 0x55, N, s2));
    OK(cudaMemcpyAsync(pinned, c, N, cudaMemcpyDeviceToHost, 0));
    OK(cudaStreamSynchronize(0));
    CHECK(all(pinned, N, 0x55));

    // An event recorded on the legacy stream follows the blocking streams' earlier work.
    cudaEvent_t e;
    OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    OK(cudaMemsetAsync(a, 0x66, N, s1));
    OK(cudaEventRecord(e, 0));
    OK(cudaEventSynchronize(e));
    CHECK(all(fetch(a, N).data(), N, 0x66));

    // A non-blocking stream is ordered only by what the program asks for (here an event).
    OK(cudaMemsetAsync(a, 0x77, N, nb));
    OK(cudaEventRecord(e, nb));
    OK(cudaStreamWaitEvent(0, e, 0));
    OK(cudaMemcpyAsync(b, a, N, cudaMemcpyDeviceToDevice, 0));
    OK(cudaStreamSynchronize(0));
    CHECK(all(fetch(b, N).data(), N, 0x77));
    OK(cudaMemsetAsync(c, 0x78, N, nb));
    OK(cudaStreamSynchronize(nb));
    CHECK(all(fetch(c, N).data(), N, 0x78));

    // The per-thread default stream is a blocking stream.
    OK(cudaMemsetAsync(a, 0x88, N, cudaStreamPerThread));
    OK(cudaMemcpyAsync(b, a, N, cudaMemcpyDeviceToDevice, 0));
    CHECK(all(fetch(b, N).data(), N, 0x88));
    OK(cudaMemsetAsync(a, 0x99, N, 0));
    OK(cudaMemcpyAsync(c, a, N, cudaMemcpyDeviceToDevice, cudaStreamPerThread));
    OK(cudaStreamSynchronize(cudaStreamPerThread));
    CHECK(all(fetch(c, N).data(), N, 0x99));

    // After a device synchronisation, and again after it.
    OK(cudaDeviceSynchronize());
    OK(cudaMemsetAsync(a, 0xaa, N, s2));
    CHECK(all(fetch(a, N).data(), N, 0xaa));

    // 300 streams at once (vgpud allows 1024 per VM): each fills its own slice and copies it;
    // one synchronous copy on the legacy stream then sees every stream's work.
    const int S = 300;
    const size_t slice = 128;
    unsigned char *big = nullptr, *copy = nullptr;
    OK(cudaMalloc(&big, S * slice));
    OK(cudaMalloc(&copy, S * slice));
    OK(cudaMemset(copy, 0, S * slice));
    std::vector<cudaStream_t> many(S);
    int lo = 0, hi = 0;
    OK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    for (int i = 0; i < S; i++) {
        // Every third one non-blocking, priorities across the device's range.
        unsigned int f = i % 3 == 2 ? cudaStreamNonBlocking : cudaStreamDefault;
        int prio = hi + (lo - hi) * i / (S - 1);
        OK(cudaStreamCreateWithPriority(&many[i], f, prio));
    }
    for (int i = 0; i < S; i++) {
        unsigned char v = (unsigned char)(i % 251 + 1);
        OK(cudaMemsetAsync(big + i * slice, v, slice, many[i]));
        OK(cudaMemcpyAsync(copy + i * slice, big + i * slice, slice, cudaMemcpyDeviceToDevice,
                           many[i]));
    }
    // The non-blocking ones are not joined by the legacy stream: wait for them explicitly.
    for (int i = 2; i < S; i += 3) OK(cudaStreamSynchronize(many[i]));
    h = fetch(copy, S * slice);
    int wrong = 0;
    for (int i = 0; i < S; i++)
        if (!all(h.data() + i * slice, slice, (unsigned char)(i % 251 + 1))) wrong++;
    CHECK(wrong == 0);
    // The legacy stream's work, then each stream's: every stream sees it.
    OK(cudaMemsetAsync(big, 0xbb, S * slice, 0));
    for (int i = 0; i < S; i++) {
        if (i % 3 == 2) continue;
        OK(cudaMemcpyAsync(copy + i * slice, big + i * slice, slice, cudaMemcpyDeviceToDevice,
                           many[i]));
    }
    OK(cudaDeviceSynchronize());
    h = fetch(copy, S * slice);
    wrong = 0;
    for (int i = 0; i < S; i++) {
        unsigned char want = i % 3 == 2 ? (unsigned char)(i % 251 + 1) : 0xbb;
        if (!all(h.data() + i * slice, slice, want)) wrong++;
    }
    CHECK(wrong == 0);
    for (int i = 0; i < S; i++) OK(cudaStreamDestroy(many[i]));

    OK(cudaEventDestroy(e));
    OK(cudaFreeHost(pinned));
    OK(cudaStreamDestroy(s1));
    OK(cudaStreamDestroy(s2));
    OK(cudaStreamDestroy(nb));
    OK(cudaFree(big));
    OK(cudaFree(copy));
    OK(cudaFree(a));
    OK(cudaFree(b));
    OK(cudaFree(c));
    return finish();
}
