// The runtime's occupancy queries (cudaOccupancy*, answered by the driver's cuOccupancy*) for
// real kernels, without launching one, checked against numbers worked out by hand from the
// device's description. The cpu reference device describes an sm_90 GPU as an H200 is: 2048
// threads (64 warps), 64 Ki registers and 32 blocks per multiprocessor, 228 KiB (233472 bytes)
// of shared memory per multiprocessor, 48 KiB per block by default and 227 KiB opted in, 1 KiB
// reserved per block; only its multiprocessor count differs, so grid sizes are checked as
// multiples of it. The numbers hold for any kernel of at most 32 registers per thread (1024
// per warp: 16 warps fit in each quarter of the register file, 64 per multiprocessor, so
// registers never limit), which the program checks first. Prints PASS when every check held.
#include <cstdio>
#include <cuda_runtime.h>
#include "check.h"

__global__ void scale(float *x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

// Dynamic shared memory only: no static shared memory to count.
__global__ void stage(const float *in, float *out, int n) {
    extern __shared__ float buf[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? in[i] : 0.0f;
    __syncthreads();
    if (i < n) out[i] = buf[blockDim.x - 1 - threadIdx.x];
}

// 128 bytes of dynamic shared memory per thread.
static size_t per_thread_128(int block) { return 128 * (size_t)block; }

int main() {
    int dev = 0, sms = 0;
    OK(cudaGetDevice(&dev));
    OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CHECK(sms > 0);

    cudaFuncAttributes a;
    OK(cudaFuncGetAttributes(&a, scale));
    CHECK(a.numRegs <= 32 && a.sharedSizeBytes == 0 && a.maxThreadsPerBlock == 1024);
    OK(cudaFuncGetAttributes(&a, stage));
    CHECK(a.numRegs <= 32 && a.sharedSizeBytes == 0 && a.maxDynamicSharedSizeBytes == 48 * 1024);

    int n = -1;
    // Warps: 256 threads = 8 warps, 8 blocks in 64 warp slots; 1024 threads, 2 blocks.
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, scale, 256, 0));
    CHECK(n == 8);
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, scale, 1024, 0));
    CHECK(n == 2);
    // Blocks: one warp each, but at most 32 blocks per multiprocessor.
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, scale, 32, 0));
    CHECK(n == 32);
    // The caching override changes nothing on sm_90 (no partitioned global caching).
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&n, scale, 256, 0,
                                                              cudaOccupancyDisableCachingOverride));
    CHECK(n == 8);

    // Shared memory: 48 KiB + 1 KiB reserved = 50176 bytes, 4 blocks in 233472.
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, stage, 128, 48 * 1024));
    CHECK(n == 4);
    // 22276 + 1024 = 23300 bytes, allocated in 128-byte units as 23424: 9 blocks (10 if the
    // allocation were exact).
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, stage, 128, 22276));
    CHECK(n == 9);

    // The block size with the most threads per multiprocessor: 1024 × 2 blocks fill it.
    int grid = 0, block = 0;
    OK(cudaOccupancyMaxPotentialBlockSize(&grid, &block, scale));
    CHECK(block == 1024 && grid == 2 * sms);
    // 128 bytes per thread under the 48 KiB limit: no block over 384 threads launches; 352
    // threads (45056 + 1024 bytes) × 5 blocks = 1760 threads beats 384 × 4 = 1536,
    // 288 × 6 = 1728 and 192 × 9 = 1728.
    OK(cudaOccupancyMaxPotentialBlockSizeVariableSMem(&grid, &block, stage, per_thread_128));
    CHECK(block == 352 && grid == 5 * sms);

    // One block may have all of its 48 KiB.
    size_t avail = 0;
    OK(cudaOccupancyAvailableDynamicSMemPerBlock(&avail, stage, 1, 128));
    CHECK(avail == 48 * 1024);

    // Opted in to 227 KiB: one block of 227 KiB + 1 KiB fills the 228 KiB; 100 KiB + 1 KiB
    // fits twice.
    OK(cudaFuncSetAttribute(stage, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, stage, 128, 227 * 1024));
    CHECK(n == 1);
    OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, stage, 128, 100 * 1024));
    CHECK(n == 2);
    OK(cudaOccupancyAvailableDynamicSMemPerBlock(&avail, stage, 1, 128));
    CHECK(avail == 227 * 1024);

    // Clusters of one block: blocks per multiprocessor × multiprocessors.
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(sms);
    cfg.blockDim = dim3(256);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    OK(cudaOccupancyMaxActiveClusters(&n, scale, &cfg));
    CHECK(n == 8 * sms);
    return finish();
}
