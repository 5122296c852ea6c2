// CUDA graphs from stream capture with kernels: a chain of kernels captured on one stream, a
// fork onto a second stream and a join back through events, a page-locked copy in and out;
// the graph is replayed 50 times with new inputs, and checked against the CPU each time.
// `result:` lines must match the native run.
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>
#include "check.h"

static const int N = 1 << 16;

__global__ void scale(float *x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

__global__ void square_into(const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * x[i];
}

__global__ void add_into(float *x, const float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

int main() {
    const size_t bytes = N * sizeof(float);
    float *hin = nullptr, *hout = nullptr, *x = nullptr, *y = nullptr;
    OK(cudaMallocHost(&hin, bytes));
    OK(cudaMallocHost(&hout, bytes));
    OK(cudaMalloc(&x, bytes));
    OK(cudaMalloc(&y, bytes));
    cudaStream_t s, side;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    cudaEvent_t fork, join;
    OK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    OK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    const int block = 256, grid = (N + block - 1) / block;

    // hout = 2x + (2x)^2: x = hin; x *= 2; fork: y = x^2 on the side stream; join;
    // x += y; hout = x.
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    OK(cudaMemcpyAsync(x, hin, bytes, cudaMemcpyHostToDevice, s));
    scale<<<grid, block, 0, s>>>(x, 2.0f, N);
    OK(cudaEventRecord(fork, s));
    OK(cudaStreamWaitEvent(side, fork, 0));
    square_into<<<grid, block, 0, side>>>(x, y, N);
    OK(cudaEventRecord(join, side));
    OK(cudaStreamWaitEvent(s, join, 0));
    add_into<<<grid, block, 0, s>>>(x, y, N);
    OK(cudaMemcpyAsync(hout, x, bytes, cudaMemcpyDeviceToHost, s));
    cudaGraph_t graph = nullptr;
    OK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec = nullptr;
    OK(cudaGraphInstantiate(&exec, graph, 0));

    double total = 0;
    int bad = 0;
    const int rounds = 50;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) hin[i] = (float)((i % 97) - 48) / 16.0f + r * 0.25f;
        OK(cudaGraphLaunch(exec, s));
        OK(cudaStreamSynchronize(s));
        for (int i = 0; i < N; i++) {
            float t = 2.0f * hin[i];
            float want = t + t * t;
            if (hout[i] != want) bad++;
            total += hout[i];
        }
    }
    printf("result: %d replays, %d mismatches, sum %.6e\n", rounds, bad, total);

    // Replays queued back to back on two streams, waited for together.
    for (int i = 0; i < N; i++) hin[i] = 1.0f;
    OK(cudaGraphLaunch(exec, s));
    OK(cudaGraphLaunch(exec, side));
    OK(cudaDeviceSynchronize());
    printf("result: back to back %.1f %.1f\n", hout[0], hout[N - 1]);

    OK(cudaGraphExecDestroy(exec));
    OK(cudaGraphDestroy(graph));
    OK(cudaEventDestroy(fork));
    OK(cudaEventDestroy(join));
    OK(cudaStreamDestroy(s));
    OK(cudaStreamDestroy(side));
    OK(cudaFree(x));
    OK(cudaFree(y));
    OK(cudaFreeHost(hin));
    OK(cudaFreeHost(hout));
    return finish();
}
