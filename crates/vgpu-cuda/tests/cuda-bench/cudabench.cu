// nvcc-flags: -lcublas
// The CUDA runtime's costs as a program sees them, for running the same binary on NVIDIA's
// driver and through vgpu's libcuda.so.1 (gpu-check stage `cuda-bench` prints the ratios).
// Each line: `metric <name> <p50> <p99> <unit>`; for rates p50 = p99 = the rate.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include "check.h"

__global__ void empty_kernel() {}


using Clock = std::chrono::steady_clock;
static double us_since(Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}
static void report(const char *name, std::vector<double> &v, const char *unit) {
    std::sort(v.begin(), v.end());
    double p50 = v[v.size() / 2], p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
    printf("metric %s %.3f %.3f %s\n", name, p50, p99, unit);
}

int main() {
    OK(cudaFree(0));
    cudaStream_t s;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    // Async empty launches: rate over batches of 10 000, 5 batches, best batch reported.
    for (int i = 0; i < 1000; i++) empty_kernel<<<1, 1, 0, s>>>();
    OK(cudaStreamSynchronize(s));
    double best = 0;
    for (int b = 0; b < 5; b++) {
        auto t = Clock::now();
        for (int i = 0; i < 10000; i++) empty_kernel<<<1, 1, 0, s>>>();
        OK(cudaStreamSynchronize(s));
        best = std::max(best, 10000 / (us_since(t) * 1e-6));
    }
    printf("metric async_launch %.1f %.1f per_s\n", best, best);

    // Synchronous launch round trip: launch + synchronize.
    std::vector<double> rt;
    for (int i = 0; i < 2000; i++) {
        auto t = Clock::now();
        empty_kernel<<<1, 1, 0, s>>>();
        OK(cudaStreamSynchronize(s));
        if (i >= 200) rt.push_back(us_since(t));
    }
    report("sync_launch", rt, "us");

    // Copies: pinned and pageable host memory, both directions.
    const size_t sizes[] = {4096, 1 << 20, 64 << 20};
    const char *names[] = {"4KiB", "1MiB", "64MiB"};
    void *dev = nullptr, *pinned = nullptr;
    OK(cudaMalloc(&dev, 64 << 20));
    OK(cudaMallocHost(&pinned, 64 << 20));
    std::vector<char> pageable(64 << 20, 1);
    memset(pinned, 2, 64 << 20);
    for (int k = 0; k < 3; k++) {
        size_t n = sizes[k];
        int reps = n >= (64 << 20) ? 20 : (n >= (1 << 20) ? 200 : 2000);
        for (int kind = 0; kind < 2; kind++) {
            void *host = kind ? pageable.data() : pinned;
            for (int dir = 0; dir < 2; dir++) {
                std::vector<double> gbps;
                for (int r = 0; r < reps; r++) {
                    auto t = Clock::now();
                    if (dir == 0)
                        OK(cudaMemcpyAsync(dev, host, n, cudaMemcpyHostToDevice, s));
                    else
                        OK(cudaMemcpyAsync(host, dev, n, cudaMemcpyDeviceToHost, s));
                    OK(cudaStreamSynchronize(s));
                    gbps.push_back(n / (us_since(t) * 1e3));
                }
                char name[64];
                snprintf(name, sizeof name, "copy_%s_%s_%s", dir ? "d2h" : "h2d",
                         kind ? "pageable" : "pinned", names[k]);
                // For a rate, the median and the 1st percentile (the slow tail).
                std::sort(gbps.begin(), gbps.end());
                printf("metric %s %.3f %.3f GBps\n", name, gbps[gbps.size() / 2],
                       gbps[gbps.size() / 100]);
            }
        }
    }
    // 64 MiB of ordinary (4 KiB-page) memory page-locked with cudaHostRegister: what DMA from
    // registered memory costs on this host, next to cudaMallocHost's.
    {
        void *reg = nullptr;
        CHECK(posix_memalign(&reg, 4096, 64 << 20) == 0);
        memset(reg, 3, 64 << 20);
        OK(cudaHostRegister(reg, 64 << 20, cudaHostRegisterDefault));
        for (int dir = 0; dir < 2; dir++) {
            std::vector<double> gbps;
            for (int r = 0; r < 20; r++) {
                auto t = Clock::now();
                if (dir == 0)
                    OK(cudaMemcpyAsync(dev, reg, 64 << 20, cudaMemcpyHostToDevice, s));
                else
                    OK(cudaMemcpyAsync(reg, dev, 64 << 20, cudaMemcpyDeviceToHost, s));
                OK(cudaStreamSynchronize(s));
                gbps.push_back((64 << 20) / (us_since(t) * 1e3));
            }
            std::sort(gbps.begin(), gbps.end());
            printf("metric copy_%s_registered_64MiB %.3f %.3f GBps\n", dir ? "d2h" : "h2d",
                   gbps[gbps.size() / 2], gbps[0]);
        }
        OK(cudaHostUnregister(reg));
        free(reg);
    }
    OK(cudaFreeHost(pinned));
    OK(cudaFree(dev));

    // cuBLAS SGEMM 4096^3 on the stream: TFLOP/s per call (median and 1st percentile).
    {
        const int n = 4096;
        float *a, *b, *c;
        OK(cudaMalloc(&a, (size_t)n * n * 4));
        OK(cudaMalloc(&b, (size_t)n * n * 4));
        OK(cudaMalloc(&c, (size_t)n * n * 4));
        OK(cudaMemsetAsync(a, 0, (size_t)n * n * 4, s));
        OK(cudaMemsetAsync(b, 0, (size_t)n * n * 4, s));
        cublasHandle_t h;
        if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasSetStream(h, s) != CUBLAS_STATUS_SUCCESS) {
            printf("FAILED: cublasCreate\n");
            failures++;
            return finish();
        }
        float one = 1.0f, zero = 0.0f;
        std::vector<double> tflops;
        for (int r = 0; r < 25; r++) {
            auto t = Clock::now();
            cublasStatus_t st = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n);
            OK(cudaStreamSynchronize(s));
            CHECK(st == CUBLAS_STATUS_SUCCESS);
            if (r >= 5) tflops.push_back(2.0 * n * n * (double)n / (us_since(t) * 1e6));
        }
        std::sort(tflops.begin(), tflops.end());
        printf("metric sgemm_4096 %.3f %.3f TFLOPs\n", tflops[tflops.size() / 2], tflops[0]);
        cublasDestroy(h);
        OK(cudaFree(a));
        OK(cudaFree(b));
        OK(cudaFree(c));
    }
    return finish();
}
