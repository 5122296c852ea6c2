// Module globals through vgpu's libcuda.so.1 (cuLibraryGetGlobal / cuModuleGetGlobal): the
// runtime's symbol copies, sizes and addresses of `__device__` and `__constant__` variables,
// a 12 MiB global with an initialiser. Prints PASS when every check held; the `result:` lines
// are compared with the native run on the GPU host (the cpu device starts globals zeroed).
#include <cstdio>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

__device__ int table[256];
__constant__ float coeffs[16];
__device__ unsigned char blob[12 << 20] = {7, 8, 9};

__global__ void use_all(int *out) {
    out[threadIdx.x] = table[threadIdx.x] + (int)coeffs[threadIdx.x % 16] + blob[threadIdx.x];
}

int main() {
    size_t size = 0;
    OK(cudaGetSymbolSize(&size, table));
    CHECK(size == sizeof(int) * 256);
    OK(cudaGetSymbolSize(&size, coeffs));
    CHECK(size == sizeof(float) * 16);
    OK(cudaGetSymbolSize(&size, blob));
    CHECK(size == (12u << 20));

    // __device__: a copy in, a copy out at an offset.
    std::vector<int> in(256), back(256, -1);
    for (int i = 0; i < 256; i++) in[i] = i * 3 + 1;
    OK(cudaMemcpyToSymbol(table, in.data(), sizeof(int) * 256));
    OK(cudaMemcpyFromSymbol(back.data(), table, sizeof(int) * 128, sizeof(int) * 128));
    CHECK(memcmp(back.data(), in.data() + 128, sizeof(int) * 128) == 0);

    // __constant__, asynchronously on a stream.
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    float c[16], cback[16];
    for (int i = 0; i < 16; i++) c[i] = 0.5f * i;
    OK(cudaMemcpyToSymbolAsync(coeffs, c, sizeof c, 0, cudaMemcpyHostToDevice, s));
    OK(cudaMemcpyFromSymbolAsync(cback, coeffs, sizeof c, 0, cudaMemcpyDeviceToHost, s));
    OK(cudaStreamSynchronize(s));
    CHECK(memcmp(c, cback, sizeof c) == 0);

    // The address is device memory: a unified-address copy and a memset reach it.
    void *p = nullptr;
    OK(cudaGetSymbolAddress(&p, table));
    CHECK(p != nullptr);
    OK(cudaMemset(p, 0, sizeof(int) * 4));
    OK(cudaMemcpy(back.data(), p, sizeof(int) * 8, cudaMemcpyDefault));
    CHECK(back[0] == 0 && back[3] == 0 && back[4] == in[4] && back[7] == in[7]);
    cudaPointerAttributes pa;
    OK(cudaPointerGetAttributes(&pa, p));
    CHECK(pa.type == cudaMemoryTypeDevice);

    // The big image: its global's initial bytes, and a round trip at its end.
    unsigned char head[3] = {0, 0, 0};
    OK(cudaMemcpyFromSymbol(head, blob, 3));
    printf("result: blob head %d %d %d\n", head[0], head[1], head[2]);
    std::vector<unsigned char> tail(4096), tail_back(4096);
    for (int i = 0; i < 4096; i++) tail[i] = (unsigned char)(i * 7);
    size_t at = (12u << 20) - 4096;
    OK(cudaMemcpyToSymbol(blob, tail.data(), 4096, at));
    OK(cudaMemcpyFromSymbol(tail_back.data(), blob, 4096, at));
    CHECK(tail == tail_back);

    // A name that is no symbol of any module fails at the call.
    FAILS_WITH(cudaGetSymbolSize(&size, (const void *)&size), cudaErrorInvalidSymbol);
    cudaGetLastError();
    OK(cudaStreamDestroy(s));
    return finish();
}
