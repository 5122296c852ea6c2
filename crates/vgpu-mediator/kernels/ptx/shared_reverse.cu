// PTX conformance test: static and dynamic shared memory. Each block reverses its
// blockDim.x elements through dynamic shared memory (blockDim.x floats) and adds the block's
// index, kept in static shared memory.
// Regenerate: nvcc -ptx -arch=sm_90 shared_reverse.cu -o shared_reverse.ptx
extern "C" __global__ void block_reverse(const float* in, float* out, unsigned n)
{
    extern __shared__ float buf[];
    __shared__ float bias;
    unsigned base = blockIdx.x * blockDim.x;
    unsigned i = base + threadIdx.x;
    if (threadIdx.x == 0)
        bias = (float)blockIdx.x;
    buf[threadIdx.x] = i < n ? in[i] : 0.0f;
    __syncthreads();
    unsigned j = base + (blockDim.x - 1 - threadIdx.x);
    if (j < n)
        out[j] = buf[threadIdx.x] + bias;
}
