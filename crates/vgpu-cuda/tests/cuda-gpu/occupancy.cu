// The runtime's occupancy queries (cudaOccupancy*, answered by the driver's cuOccupancy*) for
// kernels of different register, static and dynamic shared memory use, then a launch with the
// suggested block size. vgpu's driver computes the answers itself from the kernels' attributes
// and the device's description; `result:` lines must match the native run.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

// Many values live at once: more registers per thread.
__global__ void heavy(const float *in, float *out, int n) {
    float acc[24];
#pragma unroll
    for (int k = 0; k < 24; k++) acc[k] = in[(threadIdx.x + 37 * k) % n];
#pragma unroll
    for (int r = 0; r < 8; r++) {
#pragma unroll
        for (int k = 0; k < 24; k++) acc[k] = acc[k] * acc[(k + 7) % 24] + 1.0f;
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 24; k++) s += acc[k];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// 12 KiB of static shared memory.
__global__ void tiled(const float *in, float *out) {
    __shared__ float tile[3072];
    for (int i = threadIdx.x; i < 3072; i += blockDim.x) tile[i] = in[i];
    __syncthreads();
    out[threadIdx.x] = tile[3071 - threadIdx.x];
}

// Dynamic shared memory only.
__global__ void staged(const float *in, float *out) {
    extern __shared__ float buf[];
    buf[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

static size_t per_thread_128(int block) { return 128 * (size_t)block; }

// Blocks per multiprocessor for a few block sizes, on one line.
template <class K> static void blocks(const char *name, K k, size_t dyn) {
    const int sizes[] = {32, 64, 96, 128, 192, 256, 384, 512, 768, 1024};
    printf("result: %s dyn %zu blocks/SM:", name, dyn);
    for (int b : sizes) {
        int n = -1;
        cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, b, dyn);
        if (e) printf(" %d:%s", b, cudaGetErrorName(e));
        else printf(" %d:%d", b, n);
    }
    printf("\n");
}

template <class K> static void potential(const char *name, K k, size_t dyn, int limit) {
    int grid = -1, block = -1;
    cudaError_t e = cudaOccupancyMaxPotentialBlockSize(&grid, &block, k, dyn, limit);
    printf("result: %s potential (dyn %zu, limit %d): %s grid %d block %d\n", name, dyn, limit,
           cudaGetErrorName(e), grid, block);
}

template <class K> static void available(const char *name, K k, int nblocks, int block) {
    size_t bytes = 0;
    cudaError_t e = cudaOccupancyAvailableDynamicSMemPerBlock(&bytes, k, nblocks, block);
    printf("result: %s available dynamic smem (%d x %d): %s %zu\n", name, nblocks, block,
           cudaGetErrorName(e), bytes);
}

// cudaOccupancyMaxActiveClusters with a cluster dimension attribute of `cluster` blocks (0: no
// attribute).
template <class K> static void clusters(const char *name, K k, int block, size_t dyn, int cluster) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(264);
    cfg.blockDim = dim3(block);
    cfg.dynamicSmemBytes = dyn;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = cluster ? 1 : 0;
    int n = -1;
    cudaError_t e = cudaOccupancyMaxActiveClusters(&n, k, &cfg);
    cudaGetLastError();
    printf("result: %s clusters of %d (block %d, dyn %zu): %s %d\n", name, cluster, block, dyn,
           cudaGetErrorName(e), n);
}

template <class K> static void attrs(const char *name, K k) {
    cudaFuncAttributes a;
    OK(cudaFuncGetAttributes(&a, k));
    printf("result: %s regs %d static %zu maxdyn %d maxthreads %d carveout %d\n", name, a.numRegs,
           a.sharedSizeBytes, a.maxDynamicSharedSizeBytes, a.maxThreadsPerBlock,
           a.preferredShmemCarveout);
}

int main() {
    int sms = 0;
    OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    printf("result: %d multiprocessors\n", sms);
    attrs("saxpy", saxpy);
    attrs("heavy", heavy);
    attrs("tiled", tiled);
    attrs("staged", staged);

    blocks("saxpy", saxpy, 0);
    blocks("heavy", heavy, 0);
    blocks("tiled", tiled, 0);
    blocks("staged", staged, 0);
    blocks("staged", staged, 1024);
    blocks("staged", staged, 22276);
    blocks("staged", staged, 48 * 1024);
    blocks("staged", staged, 48 * 1024 + 1);
    int n = -1;
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&n, heavy, 256, 0,
                                                              cudaOccupancyDisableCachingOverride));
    printf("result: heavy 256 with the caching override: %d\n", n);

    potential("saxpy", saxpy, 0, 0);
    potential("saxpy", saxpy, 0, 200);
    potential("heavy", heavy, 0, 0);
    potential("tiled", tiled, 0, 0);
    potential("staged", staged, 20000, 0);
    int grid = -1, block = -1;
    OK(cudaOccupancyMaxPotentialBlockSizeVariableSMem(&grid, &block, staged, per_thread_128));
    printf("result: staged potential, 128 bytes per thread: grid %d block %d\n", grid, block);

    available("staged", staged, 1, 128);
    available("staged", staged, 2, 128);
    available("tiled", tiled, 1, 256);
    available("tiled", tiled, 4, 256);
    available("heavy", heavy, 1, 1024);

    // Opted in to 227 KiB of dynamic shared memory.
    OK(cudaFuncSetAttribute(staged, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    blocks("staged opted in", staged, 100 * 1024);
    blocks("staged opted in", staged, 227 * 1024);
    available("staged opted in", staged, 1, 128);
    available("staged opted in", staged, 2, 128);
    available("staged opted in", staged, 3, 128);

    // Clusters of 1 and 2 blocks: one block per multiprocessor (200 KiB each), several.
    clusters("staged", staged, 128, 200 * 1024, 1);
    clusters("staged", staged, 128, 200 * 1024, 2);
    clusters("saxpy", saxpy, 256, 0, 1);
    clusters("saxpy", saxpy, 256, 0, 2);
    clusters("heavy", heavy, 512, 0, 2);
    // Without a cluster attribute: no cluster launch (NVIDIA's driver answers 0).
    clusters("saxpy", saxpy, 256, 0, 0);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(8);
    cfg.blockDim = dim3(128);
    int csize = -1;
    cudaError_t e = cudaOccupancyMaxPotentialClusterSize(&csize, saxpy, &cfg);
    cudaGetLastError();
    printf("result: saxpy potential cluster size (block 128): %s %d\n", cudaGetErrorName(e), csize);

    // A launch with the suggested block size.
    OK(cudaOccupancyMaxPotentialBlockSize(&grid, &block, saxpy));
    const int len = 1 << 20;
    float *x = nullptr, *y = nullptr;
    OK(cudaMalloc(&x, len * sizeof(float)));
    OK(cudaMalloc(&y, len * sizeof(float)));
    static float hx[1 << 20], hy[1 << 20];
    for (int i = 0; i < len; i++) {
        hx[i] = (float)(i % 1000);
        hy[i] = 1.0f;
    }
    OK(cudaMemcpy(x, hx, sizeof hx, cudaMemcpyHostToDevice));
    OK(cudaMemcpy(y, hy, sizeof hy, cudaMemcpyHostToDevice));
    saxpy<<<(len + block - 1) / block, block>>>(2.0f, x, y, len);
    OK(cudaGetLastError());
    OK(cudaMemcpy(hy, y, sizeof hy, cudaMemcpyDeviceToHost));
    int bad = 0;
    double sum = 0;
    for (int i = 0; i < len; i++) {
        if (hy[i] != 2.0f * (float)(i % 1000) + 1.0f) bad++;
        sum += hy[i];
    }
    printf("result: saxpy with block %d: %d wrong, sum %.0f\n", block, bad, sum);
    CHECK(bad == 0);
    OK(cudaFree(x));
    OK(cudaFree(y));

    // Last, as it changes the kernel: a carveout preference of half the shared memory.
    OK(cudaFuncSetAttribute(saxpy, cudaFuncAttributePreferredSharedMemoryCarveout, 50));
    attrs("saxpy carveout 50", saxpy);
    blocks("saxpy carveout 50", saxpy, 48 * 1024);
    return finish();
}
