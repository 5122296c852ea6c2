// nvcc-flags: -lcublas
// cuBLAS through vgpu's libcuda.so.1: single-precision GEMMs (square, rectangular and
// transposed, with alpha and beta) checked against a CPU reference, and a strided batched GEMM.
// The `result:` lines (the check and a hash of the output bits) must be the same on NVIDIA's
// driver and through vgpu: the same kernels on the same GPU give the same bits.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include "check.h"

#define BLAS_OK(call)                                                                     \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            printf("FAILED %s:%d: %s = %d\n", __FILE__, __LINE__, #call, (int)s_);         \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

static uint64_t fnv(const std::vector<float> &v) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)v.data();
    for (size_t i = 0; i < v.size() * sizeof(float); i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static std::vector<float> fill(size_t n, unsigned seed) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)((seed >> 9) % 2001) / 1000.0f - 1.0f;
    }
    return v;
}

// C = alpha op(A) op(B) + beta C, column-major, as cuBLAS defines it.
static void gemm_ref(bool ta, bool tb, int m, int n, int k, float alpha, const std::vector<float> &a,
                     int lda, const std::vector<float> &b, int ldb, float beta,
                     std::vector<float> &c, int ldc) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                float x = ta ? a[p + (size_t)i * lda] : a[i + (size_t)p * lda];
                float y = tb ? b[j + (size_t)p * ldb] : b[p + (size_t)j * ldb];
                s += (double)x * y;
            }
            c[i + (size_t)j * ldc] = (float)(alpha * s + beta * c[i + (size_t)j * ldc]);
        }
}

static void one(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, float alpha, float beta) {
    int lda = ta ? k : m, ldb = tb ? n : k, ldc = m;
    std::vector<float> a = fill((size_t)lda * (ta ? m : k), 1 + m), b = fill((size_t)ldb * (tb ? k : n), 2 + n),
                       c = fill((size_t)ldc * n, 3 + k);
    float *da, *db, *dc;
    OK(cudaMalloc(&da, a.size() * 4));
    OK(cudaMalloc(&db, b.size() * 4));
    OK(cudaMalloc(&dc, c.size() * 4));
    OK(cudaMemcpy(da, a.data(), a.size() * 4, cudaMemcpyHostToDevice));
    OK(cudaMemcpy(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice));
    OK(cudaMemcpy(dc, c.data(), c.size() * 4, cudaMemcpyHostToDevice));
    BLAS_OK(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                        &alpha, da, lda, db, ldb, &beta, dc, ldc));
    std::vector<float> got(c.size());
    OK(cudaMemcpy(got.data(), dc, got.size() * 4, cudaMemcpyDeviceToHost));
    gemm_ref(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    double worst = 0;
    for (size_t i = 0; i < c.size(); i++) worst = fmax(worst, fabs((double)got[i] - c[i]));
    // TF32 is off by default for cuBLAS SGEMM: FP32 accumulation, error well under 1e-3 here.
    bool ok = worst < 1e-3 * sqrt((double)k);
    CHECK(ok);
    printf("result: sgemm %c%c %dx%dx%d within tolerance %d bits %016llx\n", ta ? 'T' : 'N',
           tb ? 'T' : 'N', m, n, k, ok, (unsigned long long)fnv(got));
    OK(cudaFree(da));
    OK(cudaFree(db));
    OK(cudaFree(dc));
}

int main() {
    cublasHandle_t h = nullptr;
    BLAS_OK(cublasCreate(&h));
    if (failures) return finish();
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    BLAS_OK(cublasSetStream(h, s));
    one(h, false, false, 256, 256, 256, 1.0f, 0.0f);
    one(h, false, false, 512, 384, 320, 0.5f, 2.0f);
    one(h, true, false, 300, 200, 100, 1.5f, -1.0f);
    one(h, false, true, 1024, 1024, 1024, 1.0f, 1.0f);

    // A strided batched GEMM: 16 products of 64x64 matrices.
    const int n = 64, batch = 16;
    std::vector<float> a = fill((size_t)n * n * batch, 7), b = fill((size_t)n * n * batch, 8),
                       c((size_t)n * n * batch, 0.0f);
    float *da, *db, *dc;
    OK(cudaMalloc(&da, a.size() * 4));
    OK(cudaMalloc(&db, b.size() * 4));
    OK(cudaMalloc(&dc, c.size() * 4));
    OK(cudaMemcpyAsync(da, a.data(), a.size() * 4, cudaMemcpyHostToDevice, s));
    OK(cudaMemcpyAsync(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice, s));
    float one_f = 1.0f, zero = 0.0f;
    BLAS_OK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one_f, da, n, (long long)n * n,
                                      db, n, (long long)n * n, &zero, dc, n, (long long)n * n, batch));
    std::vector<float> got(c.size());
    OK(cudaMemcpyAsync(got.data(), dc, got.size() * 4, cudaMemcpyDeviceToHost, s));
    OK(cudaStreamSynchronize(s));
    double worst = 0;
    for (int i = 0; i < batch; i++) {
        std::vector<float> ai(a.begin() + (size_t)i * n * n, a.begin() + (size_t)(i + 1) * n * n);
        std::vector<float> bi(b.begin() + (size_t)i * n * n, b.begin() + (size_t)(i + 1) * n * n);
        std::vector<float> ci((size_t)n * n, 0.0f);
        gemm_ref(false, false, n, n, n, 1.0f, ai, n, bi, n, 0.0f, ci, n);
        for (int j = 0; j < n * n; j++) worst = fmax(worst, fabs((double)got[(size_t)i * n * n + j] - ci[j]));
    }
    CHECK(worst < 1e-3);
    printf("result: sgemm batched %dx%d x%d within tolerance %d bits %016llx\n", n, n, batch,
           worst < 1e-3, (unsigned long long)fnv(got));
    BLAS_OK(cublasDestroy(h));
    OK(cudaStreamDestroy(s));
    return finish();
}
