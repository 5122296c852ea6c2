// Kernels of drvapi.cu, built by the GPU-host harness into drvapi_kernels.cubin (SASS for
// sm_90) and drvapi_kernels.ptx, which drvapi.cu loads through the driver API.
extern "C" __global__ void scale(float *x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}

extern "C" __global__ void iota(int *x, int base, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = base + i;
}

__device__ int hits;

extern "C" __global__ void count(const int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] % 3 == 0) atomicAdd(&hits, 1);
}
