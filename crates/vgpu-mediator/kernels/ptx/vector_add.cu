// PTX conformance test: c[i] = a[i] + b[i] (grid-stride).
// Regenerate: nvcc -ptx -arch=sm_90 vector_add.cu -o vector_add.ptx
extern "C" __global__ void vadd(const float* a, const float* b, float* c, unsigned n)
{
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += stride)
        c[i] = a[i] + b[i];
}
