// PTX conformance test: a kernel that faults by writing far outside its allocation.
// Regenerate: nvcc -ptx -arch=sm_90 oob_write.cu -o oob_write.ptx
extern "C" __global__ void oob_write(unsigned* p, unsigned long long offset)
{
    ((volatile unsigned*)p)[offset] = 0xdeadbeefu;
}
