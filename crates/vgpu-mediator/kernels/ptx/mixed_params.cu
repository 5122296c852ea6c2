// PTX conformance test: parameters of every size, so that their alignment matters.
// Layout: a u8 @0, b u16 @2, c u32 @4, d u64 @8, e f32 @16, f f64 @24, out_u ptr @32,
// out_f ptr @40, g i8 @48 (49 bytes).
// Regenerate: nvcc -ptx -arch=sm_90 mixed_params.cu -o mixed_params.ptx
extern "C" __global__ void mixed(unsigned char a, unsigned short b, unsigned int c,
                                 unsigned long long d, float e, double f,
                                 unsigned long long* out_u, double* out_f, signed char g)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    out_u[0] = a;
    out_u[1] = b;
    out_u[2] = c;
    out_u[3] = d;
    out_u[4] = (unsigned long long)(long long)g;
    out_f[0] = (double)e;
    out_f[1] = f;
}
