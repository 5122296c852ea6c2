// Driver API calls from a runtime program (which does not link libcuda): the entry points as
// the runtime hands them out, and checks of their results. Include after check.h.
#pragma once
#include <cstdio>
#include <cuda.h>
#include <cuda_runtime.h>

// A driver call that must answer `want`.
#define DRV_IS(call, want)                                                                \
    do {                                                                                  \
        CUresult r_ = (call);                                                             \
        if (r_ != (want)) {                                                               \
            printf("FAILED %s:%d: %s = %d, want %d\n", __FILE__, __LINE__, #call, (int)r_, \
                   (int)(want));                                                          \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)
// A driver call that must succeed.
#define DRV(call) DRV_IS(call, CUDA_SUCCESS)
// A driver call that must be refused (NVIDIA documents the refusal, not its code).
#define DRV_FAILS(call)                                                                   \
    do {                                                                                  \
        if ((call) == CUDA_SUCCESS) {                                                     \
            printf("FAILED %s:%d: %s succeeded\n", __FILE__, __LINE__, #call);           \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

// Sets `*f` to the driver entry point `name` of CUDA 13.0; a failure when there is none.
template <typename F> static bool entry(const char *name, F *f) {
    void *p = nullptr;
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 13000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || p == nullptr) {
        printf("FAILED: no driver entry point %s\n", name);
        failures++;
        return false;
    }
    *f = (F)p;
    return true;
}
