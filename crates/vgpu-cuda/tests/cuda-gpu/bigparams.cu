// Kernel parameters beyond a launch entry's 72 bytes, up to CUDA 12.1's 32 764: a 4 KiB struct
// passed by value, a 32 000-byte __grid_constant__ struct, and 2 000 launches in a row so that
// the parameter ring is reused many times. `result:` lines must match the native run.
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>
#include "check.h"

struct Mid { float w[1024]; };          // 4 KiB
struct Big { int v[8000]; };            // 32 000 bytes

__global__ void dot_mid(const Mid m, const float *x, float *out) {
    __shared__ float acc[256];
    float s = 0;
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) s += m.w[i] * x[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0;
        for (int i = 0; i < blockDim.x; i++) t += acc[i];
        out[blockIdx.x] = t;
    }
}

__global__ void sum_big(const __grid_constant__ Big b, long long *out) {
    long long s = 0;
    for (int i = threadIdx.x; i < 8000; i += blockDim.x) s += b.v[i];
    atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

__global__ void add_k(const Mid m, float *acc, int k) {
    if (threadIdx.x == 0) acc[k % 16] += m.w[k % 1024];
}


int main() {
    static Mid m;
    static Big b;
    float x[1024];
    for (int i = 0; i < 1024; i++) { m.w[i] = (float)(i % 13) - 6.0f; x[i] = (float)(i % 7) * 0.5f; }
    long long want_big = 0;
    for (int i = 0; i < 8000; i++) { b.v[i] = i * 3 - 7000; want_big += b.v[i]; }
    float *dx, *dout, *dacc;
    long long *dbig;
    OK(cudaMalloc(&dx, sizeof x));
    OK(cudaMalloc(&dout, 4 * sizeof(float)));
    OK(cudaMalloc(&dacc, 16 * sizeof(float)));
    OK(cudaMalloc(&dbig, sizeof(long long)));
    OK(cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice));
    OK(cudaMemset(dbig, 0, sizeof(long long)));
    OK(cudaMemset(dacc, 0, 16 * sizeof(float)));
    dot_mid<<<4, 256>>>(m, dx, dout);
    OK(cudaGetLastError());
    sum_big<<<2, 128>>>(b, dbig);
    OK(cudaGetLastError());
    for (int k = 0; k < 2000; k++) {
        m.w[k % 1024] += 1.0f;  // each launch carries its own copy of the parameters
        add_k<<<1, 32>>>(m, dacc, k);
    }
    OK(cudaGetLastError());
    OK(cudaDeviceSynchronize());
    float out[4], acc[16];
    long long big = 0;
    OK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
    OK(cudaMemcpy(acc, dacc, sizeof acc, cudaMemcpyDeviceToHost));
    OK(cudaMemcpy(&big, dbig, sizeof big, cudaMemcpyDeviceToHost));
    float want_dot = 0;
    for (int i = 0; i < 1024; i++) want_dot += ((float)(i % 13) - 6.0f) * ((float)(i % 7) * 0.5f);
    double acc_sum = 0;
    for (int i = 0; i < 16; i++) acc_sum += acc[i];
    int bad = (out[0] != out[3]) + (big != 2 * want_big) + (out[0] - want_dot > 1e-2f || want_dot - out[0] > 1e-2f);
    printf("result: dot %.4f, big %lld, acc %.4f\n", out[0], big, acc_sum);
    if (bad) { printf("mismatch: want dot %.4f big %lld\n", want_dot, 2 * want_big); return 1; }
    return finish();
}
