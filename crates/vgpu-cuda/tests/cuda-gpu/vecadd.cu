// Kernels through vgpu's libcuda.so.1: vector add and saxpy on two streams with events, the
// results checked against the CPU and printed as `result:` lines, which must be the same on
// NVIDIA's driver and through vgpu (the GPU host's `cargo xtask gpu-check` stage `cuda`).
#include <cmath>
#include <cstdio>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

__global__ void vadd(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

__global__ void saxpy(float a, const float *x, float *y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = a * x[i] + y[i];
}


int main() {
    const int n = 1 << 20;
    std::vector<float> a(n), b(n), c(n), y(n);
    for (int i = 0; i < n; i++) {
        a[i] = (float)(i % 1000) * 0.5f;
        b[i] = (float)(i % 777) * 0.25f;
        y[i] = 1.0f;
    }
    float *da, *db, *dc, *dy;
    OK(cudaMalloc(&da, n * sizeof(float)));
    OK(cudaMalloc(&db, n * sizeof(float)));
    OK(cudaMalloc(&dc, n * sizeof(float)));
    OK(cudaMalloc(&dy, n * sizeof(float)));
    OK(cudaMemcpy(da, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    OK(cudaMemcpy(db, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    OK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));

    cudaStream_t s1, s2;
    OK(cudaStreamCreate(&s1));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t done;
    OK(cudaEventCreate(&done));
    vadd<<<(n + 255) / 256, 256, 0, s1>>>(da, db, dc, n);
    OK(cudaGetLastError());
    OK(cudaEventRecord(done, s1));
    OK(cudaStreamWaitEvent(s2, done, 0));
    // y = 2 * c + y, after vadd (through the event), 100 times.
    for (int k = 0; k < 100; k++) saxpy<<<264, 256, 0, s2>>>(2.0f, dc, dy, n);
    OK(cudaGetLastError());
    OK(cudaStreamSynchronize(s2));
    OK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
    OK(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));

    int bad = 0;
    double sum_c = 0, sum_y = 0;
    for (int i = 0; i < n; i++) {
        float want = a[i] + b[i];
        if (c[i] != want) bad++;
        float wy = 1.0f;
        for (int k = 0; k < 100; k++) wy = 2.0f * want + wy;
        if (fabsf(y[i] - wy) > 1e-3f * fabsf(wy)) bad++;
        sum_c += c[i];
        sum_y += y[i];
    }
    printf("result: vadd sum %.6e, saxpy sum %.6e, %d mismatches\n", sum_c, sum_y, bad);
    OK(cudaFree(da));
    OK(cudaFree(db));
    OK(cudaFree(dc));
    OK(cudaFree(dy));
    if (bad) return 1;
    return finish();
}
