// Tensor maps and the tensor memory accelerator (Hopper's TMA), as a GEMM library uses them:
// cuTensorMapEncodeTiled on a float matrix, a kernel that loads 32 x 32 tiles through the map
// with cp.async.bulk.tensor into shared memory, whole tiles and one that reaches past the
// matrix (zero filled), and cuTensorMapReplaceAddress pointing the map at a second matrix.
// Prints `result:` lines, identical natively and through vgpu, and PASS when every check held.
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>
#include <cuda.h>
#include <cuda_runtime.h>
#include "check.h"
#include "driver.h"

constexpr int ROWS = 256, COLS = 192, TILE = 32;

static decltype(&cuTensorMapEncodeTiled) encodeTiled;
static decltype(&cuTensorMapReplaceAddress) replaceAddress;

__device__ inline unsigned smem(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Loads the tile at element (x, y) of `map` into `tile` and scales it into `out` (row-major,
// `ld` floats per row), at the tile's place (or at 0, 0 when `at_origin`).
__global__ void tma_tile(const __grid_constant__ CUtensorMap map, float *out, int ld, int x0,
                         int y0, bool at_origin) {
    __shared__ alignas(128) float tile[TILE * TILE];
    __shared__ alignas(8) uint64_t bar;
    int x = x0 + blockIdx.x * TILE, y = y0 + blockIdx.y * TILE;
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem(&bar)));
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem(&bar)),
                     "r"((unsigned)sizeof tile)
                     : "memory");
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::"
                     "bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(smem(tile)),
                     "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(smem(&bar))
                     : "memory");
    }
    unsigned done = 0;
    while (!done) {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n"
                     " selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(smem(&bar))
                     : "memory");
    }
    int ox = at_origin ? 0 : x, oy = at_origin ? 0 : y;
    for (int i = threadIdx.x; i < TILE * TILE; i += blockDim.x)
        out[(size_t)(oy + i / TILE) * ld + ox + i % TILE] = tile[i] * 2.0f + 1.0f;
}

static float value(int r, int c, int salt) {
    return (float)((r * 131 + c * 7 + salt) % 1000) * 0.25f;
}

static CUtensorMap encode(float *base) {
    CUtensorMap m;
    memset(&m, 0, sizeof m);
    cuuint64_t dims[2] = {COLS, ROWS};
    cuuint64_t strides[1] = {COLS * sizeof(float)};
    cuuint32_t box[2] = {TILE, TILE};
    cuuint32_t elem[2] = {1, 1};
    DRV(encodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, base, dims, strides, box, elem,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                    CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    return m;
}

static double checksum(const std::vector<float> &v) {
    double s = 0;
    for (size_t i = 0; i < v.size(); i++) s += v[i] * (double)(i % 97 + 1);
    return s;
}

int main() {
    OK(cudaFree(0));
    if (!entry("cuTensorMapEncodeTiled", &encodeTiled) ||
        !entry("cuTensorMapReplaceAddress", &replaceAddress))
        return finish();
    const size_t n = (size_t)ROWS * COLS;
    std::vector<float> a(n), b(n), out(n);
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) {
            a[(size_t)r * COLS + c] = value(r, c, 1);
            b[(size_t)r * COLS + c] = value(r, c, 500);
        }
    float *da, *db, *dout;
    OK(cudaMalloc(&da, n * sizeof(float)));
    OK(cudaMalloc(&db, n * sizeof(float)));
    OK(cudaMalloc(&dout, n * sizeof(float)));
    OK(cudaMemcpy(da, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    OK(cudaMemcpy(db, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));

    // The same arguments encode the same map.
    CUtensorMap m = encode(da), again = encode(da);
    CHECK(memcmp(&m, &again, sizeof m) == 0);

    // Every whole tile of A.
    dim3 grid(COLS / TILE, ROWS / TILE);
    tma_tile<<<grid, 256>>>(m, dout, COLS, 0, 0, false);
    OK(cudaGetLastError());
    OK(cudaMemcpy(out.data(), dout, n * sizeof(float), cudaMemcpyDeviceToHost));
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += out[i] != a[i] * 2.0f + 1.0f;
    CHECK(bad == 0);
    printf("result: tiles %.1f mismatches %d\n", checksum(out), bad);

    // A tile 16 elements past the last row and column: the outside reads as zero.
    OK(cudaMemset(dout, 0xff, n * sizeof(float)));
    tma_tile<<<1, 128>>>(m, dout, COLS, COLS - 16, ROWS - 16, true);
    OK(cudaGetLastError());
    OK(cudaMemcpy(out.data(), dout, n * sizeof(float), cudaMemcpyDeviceToHost));
    bad = 0;
    for (int i = 0; i < TILE; i++)
        for (int j = 0; j < TILE; j++) {
            int r = ROWS - 16 + i, c = COLS - 16 + j;
            float want = (r < ROWS && c < COLS) ? value(r, c, 1) * 2.0f + 1.0f : 1.0f;
            bad += out[(size_t)i * COLS + j] != want;
        }
    CHECK(bad == 0);
    printf("result: edge tile mismatches %d\n", bad);

    // The map pointed at B reads B, and equals B's own map.
    DRV(replaceAddress(&m, db));
    CUtensorMap mb = encode(db);
    CHECK(memcmp(&m, &mb, sizeof m) == 0);
    tma_tile<<<grid, 256>>>(m, dout, COLS, 0, 0, false);
    OK(cudaGetLastError());
    OK(cudaMemcpy(out.data(), dout, n * sizeof(float), cudaMemcpyDeviceToHost));
    bad = 0;
    for (size_t i = 0; i < n; i++) bad += out[i] != b[i] * 2.0f + 1.0f;
    CHECK(bad == 0);
    printf("result: replaced %.1f mismatches %d\n", checksum(out), bad);

    OK(cudaFree(da));
    OK(cudaFree(db));
    OK(cudaFree(dout));
    return finish();
}
