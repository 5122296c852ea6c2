// vgpu built-in kernels (CUDA C). Compiled by NVRTC at vgpud start-up (cuda backend) and by the
// native benchmark, so this file is self-contained: no #include, no host code.
//
// Every kernel is `extern "C"`, named exactly as `vgpu_abi::Builtin::name()`, and takes the
// parameters of the packed parameter struct of `vgpu-abi/src/cmd.rs` in order (pointers are
// 8 bytes, every other parameter 4), so a launch passes the guest's packed bytes unchanged.
//
// Results match the cpu reference backend (`backend/kernels.rs`) bit for bit and do not depend
// on grid or block:
//   * vector_add_f32: c = a + b (one IEEE add);
//   * saxpy: y = fmaf(alpha, x, y) (Rust's mul_add);
//   * sgemm: each dot product accumulated with fmaf over k ascending, then
//     alpha*acc + beta*c with separately rounded multiply and add (no contraction);
//   * reduce_sum_f32: accumulated in double, rounded once to float. It equals the reference
//     whenever the double sum is exact (order-independent), e.g. for values on a common 2^-24
//     grid with fewer than 2^29 elements; block 0 does all of it (no scratch memory).
//   * busy: spins on %globaltimer for duration_us;
//   * fault: stores through an unmapped address (CUDA_ERROR_ILLEGAL_ADDRESS).

typedef unsigned long long u64;

#define VGPU_GRID_THREADS() ((u64)gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y * blockDim.z)

__device__ __forceinline__ u64 vgpu_block_linear()
{
    return (u64)blockIdx.x + (u64)gridDim.x * ((u64)blockIdx.y + (u64)gridDim.y * blockIdx.z);
}

__device__ __forceinline__ unsigned vgpu_thread_in_block()
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

__device__ __forceinline__ u64 vgpu_global_thread()
{
    u64 threads = (u64)blockDim.x * blockDim.y * blockDim.z;
    return vgpu_block_linear() * threads + vgpu_thread_in_block();
}

extern "C" __global__ void vector_add_f32(const float* a, const float* b, float* c, unsigned n)
{
    u64 stride = VGPU_GRID_THREADS();
    for (u64 i = vgpu_global_thread(); i < n; i += stride) {
        c[i] = __fadd_rn(a[i], b[i]);
    }
}

extern "C" __global__ void saxpy(const float* x, float* y, unsigned n, float alpha)
{
    u64 stride = VGPU_GRID_THREADS();
    for (u64 i = vgpu_global_thread(); i < n; i += stride) {
        y[i] = fmaf(alpha, x[i], y[i]);
    }
}

// sgemm: C = alpha * A.B + beta * C, row-major, A m x k, B k x n, C m x n.
// Fast path (blocks of exactly 256 threads): 128 x 128 tiles of C, 8 x 8 outputs per thread
// (rows tr + 16 i, columns tc + 16 j, so shared-memory reads are conflict-free),
// k in steps of 8 through shared memory; blocks take tiles grid-stride. Any other block size
// takes the simple path. Both accumulate each output over k ascending with fmaf, so they give
// the same bits.
#define SG_BM 128
#define SG_BN 128
#define SG_BK 8
#define SG_TM 8
#define SG_TN 8

__device__ __forceinline__ float vgpu_sgemm_out(float alpha, float acc, float beta, float c)
{
    return __fadd_rn(__fmul_rn(alpha, acc), __fmul_rn(beta, c));
}

extern "C" __global__ void __launch_bounds__(1024) sgemm(const float* A, const float* B, float* C,
                                                          unsigned m, unsigned n, unsigned k,
                                                          float alpha, float beta)
{
    unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    unsigned tid = vgpu_thread_in_block();
    u64 blocks = (u64)gridDim.x * gridDim.y * gridDim.z;
    if (threads != 256) {
        u64 total = (u64)m * n;
        u64 stride = blocks * threads;
        for (u64 idx = vgpu_block_linear() * threads + tid; idx < total; idx += stride) {
            u64 i = idx / n, j = idx % n;
            float acc = 0.0f;
            for (unsigned p = 0; p < k; ++p) {
                acc = fmaf(A[i * k + p], B[(u64)p * n + j], acc);
            }
            C[idx] = vgpu_sgemm_out(alpha, acc, beta, C[idx]);
        }
        return;
    }

    __shared__ float As[SG_BK][SG_BM];
    __shared__ float Bs[SG_BK][SG_BN];
    u64 tiles_m = (m + SG_BM - 1) / SG_BM;
    u64 tiles_n = (n + SG_BN - 1) / SG_BN;
    u64 tiles = tiles_m * tiles_n;
    unsigned tr = tid / 16; // 0..15: first row of this thread's outputs
    unsigned tc = tid % 16; // 0..15: first column
    for (u64 t = vgpu_block_linear(); t < tiles; t += blocks) {
        u64 row0 = (t / tiles_n) * SG_BM;
        u64 col0 = (t % tiles_n) * SG_BN;
        float acc[SG_TM][SG_TN];
#pragma unroll
        for (int i = 0; i < SG_TM; ++i)
#pragma unroll
            for (int j = 0; j < SG_TN; ++j)
                acc[i][j] = 0.0f;
        for (unsigned p0 = 0; p0 < k; p0 += SG_BK) {
            // A tile: 128 rows x 8 columns, 4 elements per thread, stored transposed.
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                unsigned e = tid + 256 * l;
                unsigned r = e / SG_BK, c = e % SG_BK;
                u64 gr = row0 + r;
                unsigned gc = p0 + c;
                As[c][r] = (gr < m && gc < k) ? A[gr * k + gc] : 0.0f;
            }
            // B tile: 8 rows x 128 columns, 4 elements per thread.
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                unsigned e = tid + 256 * l;
                unsigned r = e / SG_BN, c = e % SG_BN;
                unsigned gr = p0 + r;
                u64 gc = col0 + c;
                Bs[r][c] = (gr < k && gc < n) ? B[(u64)gr * n + gc] : 0.0f;
            }
            __syncthreads();
            unsigned steps = (k - p0 < SG_BK) ? (k - p0) : SG_BK;
            for (unsigned p = 0; p < steps; ++p) {
                float a[SG_TM], b[SG_TN];
#pragma unroll
                for (int i = 0; i < SG_TM; ++i)
                    a[i] = As[p][tr + 16 * i];
#pragma unroll
                for (int j = 0; j < SG_TN; ++j)
                    b[j] = Bs[p][tc + 16 * j];
#pragma unroll
                for (int i = 0; i < SG_TM; ++i)
#pragma unroll
                    for (int j = 0; j < SG_TN; ++j)
                        acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < SG_TM; ++i) {
            u64 gr = row0 + tr + 16 * i;
            if (gr >= m)
                continue;
#pragma unroll
            for (int j = 0; j < SG_TN; ++j) {
                u64 gc = col0 + tc + 16 * j;
                if (gc < n) {
                    u64 o = gr * n + gc;
                    C[o] = vgpu_sgemm_out(alpha, acc[i][j], beta, C[o]);
                }
            }
        }
    }
}

extern "C" __global__ void reduce_sum_f32(const float* x, float* out, unsigned n)
{
    __shared__ double part[1024];
    if (vgpu_block_linear() != 0)
        return;
    unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    unsigned tid = vgpu_thread_in_block();
    double s = 0.0;
    for (u64 i = tid; i < n; i += threads)
        s += (double)x[i];
    part[tid] = s;
    __syncthreads();
    if (tid == 0) {
        double total = 0.0;
        for (unsigned i = 0; i < threads; ++i)
            total += part[i];
        out[0] = (float)total;
    }
}

__device__ __forceinline__ u64 vgpu_globaltimer()
{
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

extern "C" __global__ void busy(unsigned duration_us)
{
    u64 start = vgpu_globaltimer();
    u64 ns = (u64)duration_us * 1000ull;
    while (vgpu_globaltimer() - start < ns) {
    }
}

extern "C" __global__ void fault()
{
    // An address no allocation can have: the lowest 64 KiB are never mapped.
    volatile unsigned* p = (volatile unsigned*)(u64)(0x100ull + threadIdx.x * 0ull);
    *p = 0xdeadbeefu;
}
