// Tensor maps without kernels: cuTensorMapEncodeTiled and cuTensorMapEncodeIm2col on device
// memory (vgpud encodes them; the same arguments give the same map), cuTensorMapReplaceAddress
// (equal to encoding the new address), and arguments every driver refuses. Prints PASS as its
// last line when every check held (run by `cargo xtask cuda-programs` against vgpud's cpu
// backend; the GPU-host suite runs the kernels of crates/vgpu-cuda/tests/cuda-gpu/tensormap.cu).
#include <cstdio>
#include <cstring>
#include <cuda.h>
#include <cuda_runtime.h>
#include "check.h"
#include "driver.h"

static decltype(&cuTensorMapEncodeTiled) encodeTiled;
static decltype(&cuTensorMapEncodeIm2col) encodeIm2col;
static decltype(&cuTensorMapReplaceAddress) replaceAddress;

// A 128 x 256 bf16 matrix's map, 64 x 64 boxes with the 128-byte swizzle.
static CUresult tiled(CUtensorMap *m, void *base, cuuint32_t rank = 2) {
    cuuint64_t dims[2] = {256, 128};
    cuuint64_t strides[1] = {256 * 2};
    cuuint32_t box[2] = {64, 64};
    cuuint32_t elem[2] = {1, 1};
    return encodeTiled(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, base, dims, strides, box, elem,
                       CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

int main() {
    OK(cudaFree(0));
    if (!entry("cuTensorMapEncodeTiled", &encodeTiled) ||
        !entry("cuTensorMapEncodeIm2col", &encodeIm2col) ||
        !entry("cuTensorMapReplaceAddress", &replaceAddress))
        return finish();
    void *a = nullptr, *b = nullptr, *img = nullptr;
    OK(cudaMalloc(&a, 128 * 256 * 2));
    OK(cudaMalloc(&b, 128 * 256 * 2));

    CUtensorMap m, again, other;
    DRV(tiled(&m, a));
    DRV(tiled(&again, a));
    CHECK(memcmp(&m, &again, sizeof m) == 0);
    DRV(tiled(&other, b));
    CHECK(memcmp(&m, &other, sizeof m) != 0);

    // Replacing the address gives B's own map; and back.
    DRV(replaceAddress(&m, b));
    CHECK(memcmp(&m, &other, sizeof m) == 0);
    DRV(replaceAddress(&m, a));
    CHECK(memcmp(&m, &again, sizeof m) == 0);

    // An NHWC bf16 image, 2 x 8 x 8 x 64, as a convolution's im2col map.
    OK(cudaMalloc(&img, 2 * 8 * 8 * 64 * 2));
    cuuint64_t dims[4] = {64, 8, 8, 2};
    cuuint64_t strides[3] = {64 * 2, 8 * 64 * 2, 8 * 8 * 64 * 2};
    int lower[2] = {-1, -1}, upper[2] = {-1, -1};
    cuuint32_t elem[4] = {1, 1, 1, 1};
    CUtensorMap im;
    DRV(encodeIm2col(&im, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, img, dims, strides, lower, upper,
                     64, 32, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));

    // Refused: no map, no rank, more than five dimensions.
    DRV_FAILS(tiled(nullptr, a));
    DRV_FAILS(tiled(&m, a, 0));
    DRV_FAILS(tiled(&m, a, 6));
    // A map made before its memory, then pointed at it (the address is not checked).
    CUtensorMap early;
    DRV(tiled(&early, nullptr));
    DRV(replaceAddress(&early, a));
    CHECK(memcmp(&early, &again, sizeof m) == 0);

    OK(cudaFree(a));
    OK(cudaFree(b));
    OK(cudaFree(img));
    return finish();
}
