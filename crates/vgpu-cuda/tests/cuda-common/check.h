// Checks shared by the CUDA C++ test programs (crates/vgpu-cuda/tests/cuda*/). A program
// counts failures in `failures` and prints PASS as its last line when there were none.
#pragma once
#include <cstdio>
#include <cuda_runtime.h>

static int failures = 0;

// A condition that must hold.
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

// A runtime call that must succeed.
#define OK(call) FAILS_WITH(call, cudaSuccess)

// A runtime call that must answer `want`.
#define FAILS_WITH(call, want)                                                            \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != (want)) {                                                               \
            printf("FAILED %s:%d: %s = %s, want %s\n", __FILE__, __LINE__, #call,         \
                   cudaGetErrorName(e_), cudaGetErrorName(want));                         \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

// The end of main: PASS when every check held.
static int finish() {
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
