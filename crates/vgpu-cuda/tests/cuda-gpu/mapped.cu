// Mapped page-locked host memory (zero copy): cudaHostAlloc(cudaHostAllocMapped), its device
// pointer, a kernel that reads and writes it directly, the host reading the result after a
// synchronisation, and a device-side memset through the device pointer; then, as unified
// addressing promises and XLA relies on, the host pointer itself handed to a kernel and a
// memset. `result:` lines must match native.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void square_plus(const int *in, int *out, int n, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i] * in[i] + k;
}

int main() {
    int can = -1;
    OK(cudaDeviceGetAttribute(&can, cudaDevAttrCanMapHostMemory, 0));
    printf("result: can map host memory %d\n", can);
    const int n = 1 << 16;
    int *hin = nullptr, *hout = nullptr;
    OK(cudaHostAlloc(&hin, n * sizeof(int), cudaHostAllocMapped));
    OK(cudaHostAlloc(&hout, n * sizeof(int), cudaHostAllocMapped));
    for (int i = 0; i < n; i++) hin[i] = i % 1000 - 500;
    int *din = nullptr, *dout = nullptr;
    OK(cudaHostGetDevicePointer(&din, hin, 0));
    OK(cudaHostGetDevicePointer(&dout, hout, 0));
    CHECK(din != nullptr && dout != nullptr);
    cudaPointerAttributes a = {};
    OK(cudaPointerGetAttributes(&a, hin));
    CHECK(a.devicePointer == din);
    square_plus<<<(n + 255) / 256, 256>>>(din, dout, n, 7);
    OK(cudaGetLastError());
    OK(cudaDeviceSynchronize());
    long long sum = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        sum += hout[i];
        bad += hout[i] != hin[i] * hin[i] + 7;
    }
    printf("result: kernel through mapped memory: sum %lld, wrong %d\n", sum, bad);
    CHECK(bad == 0);
    // A memset and a copy through the device pointer.
    OK(cudaMemset(dout, 0, 1024 * sizeof(int)));
    OK(cudaDeviceSynchronize());
    CHECK(hout[0] == 0 && hout[1023] == 0 && hout[1024] == hin[1024] * hin[1024] + 7);
    int *dev = nullptr;
    OK(cudaMalloc(&dev, n * sizeof(int)));
    OK(cudaMemcpy(dev, din, n * sizeof(int), cudaMemcpyDefault));
    static int back[1 << 16];
    OK(cudaMemcpy(back, dev, n * sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(back[5] == hin[5] && back[n - 1] == hin[n - 1]);
    printf("result: memset and copy through the device pointer: %d %d %d\n", hout[0], hout[1024], back[n - 1]);
    // Unified addressing: the host pointer is the device pointer.
    printf("result: host pointer is the device pointer %d %d\n", (void *)din == (void *)hin,
           (void *)dout == (void *)hout);
    CHECK((void *)din == (void *)hin && (void *)dout == (void *)hout);
    square_plus<<<(n + 255) / 256, 256>>>(hin, hout, n, 3);
    OK(cudaMemsetAsync(hout + 8, 0, 8 * sizeof(int)));
    OK(cudaDeviceSynchronize());
    bad = 0;
    for (int i = 0; i < n; i++) bad += hout[i] != ((i >= 8 && i < 16) ? 0 : hin[i] * hin[i] + 3);
    printf("result: kernel and memset through the host pointer: wrong %d\n", bad);
    CHECK(bad == 0);
    OK(cudaFree(dev));
    OK(cudaFreeHost(hin));
    OK(cudaFreeHost(hout));
    return finish();
}
