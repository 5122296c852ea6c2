// Thread block clusters (Hopper): a launch with cudaLaunchKernelEx's cluster dimension
// attribute, and a kernel whose cluster shape is compiled in (__cluster_dims__), each block
// reading its neighbour's shared memory through the cluster (distributed shared memory).
// `result:` lines must match native.
#include <cstdio>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include "check.h"

namespace cg = cooperative_groups;

// Each block writes its index into shared memory; after a cluster barrier, it reads the next
// block's (in its cluster) and records the rank, the cluster size and what it read.
__global__ void neighbours(int *out) {
    __shared__ int mine;
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) mine = blockIdx.x * 10;
    cluster.sync();
    unsigned rank = cluster.block_rank();
    unsigned next = (rank + 1) % cluster.num_blocks();
    int *theirs = cluster.map_shared_rank(&mine, next);
    if (threadIdx.x == 0) {
        out[3 * blockIdx.x] = rank;
        out[3 * blockIdx.x + 1] = cluster.num_blocks();
        out[3 * blockIdx.x + 2] = *theirs;
    }
    cluster.sync();
}

__global__ void __cluster_dims__(4, 1, 1) fixed(int *out) {
    cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x == 0) out[blockIdx.x] = cluster.block_rank() * 100 + cluster.num_blocks();
}

static void print(const char *what, const int *h, int n) {
    long sum = 0;
    for (int i = 0; i < n; i++) sum = sum * 31 + h[i];
    printf("result: %s n=%d first=%d,%d,%d,%d,%d,%d hash=%ld\n", what, n, h[0], h[1], h[2],
           h[3], h[4], h[5], sum);
}

int main() {
    const int blocks = 16;
    int *d = nullptr;
    int h[3 * blocks];
    OK(cudaMalloc(&d, sizeof h));
    for (unsigned c : {1u, 2u, 4u, 8u}) {
        OK(cudaMemset(d, 0xff, sizeof h));
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks);
        cfg.blockDim = dim3(64);
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = c;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        OK(cudaLaunchKernelEx(&cfg, neighbours, d));
        OK(cudaDeviceSynchronize());
        OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
        char what[64];
        snprintf(what, sizeof what, "clusters of %u", c);
        print(what, h, 3 * blocks);
        for (int b = 0; b < blocks; b++) {
            CHECK(h[3 * b] == (int)(b % c));
            CHECK(h[3 * b + 1] == (int)c);
            CHECK(h[3 * b + 2] == (int)((b / c) * c + (b % c + 1) % c) * 10);
        }
    }
    // A grid that is not a whole number of clusters is refused at the call.
    {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks + 1);
        cfg.blockDim = dim3(64);
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 2;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelEx(&cfg, neighbours, d);
        printf("result: grid of 17 in clusters of 2: %s\n", e == cudaSuccess ? "accepted" : "refused");
        CHECK(e != cudaSuccess);
        (void)cudaGetLastError();
    }
    OK(cudaMemset(d, 0xff, sizeof h));
    fixed<<<blocks, 32>>>(d);
    OK(cudaGetLastError());
    OK(cudaDeviceSynchronize());
    OK(cudaMemcpy(h, d, blocks * sizeof(int), cudaMemcpyDeviceToHost));
    print("__cluster_dims__(4)", h, blocks);
    for (int b = 0; b < blocks; b++) CHECK(h[b] == (b % 4) * 100 + 4);
    OK(cudaFree(d));
    return finish();
}
