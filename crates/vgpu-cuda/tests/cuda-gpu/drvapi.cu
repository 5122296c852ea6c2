// nvcc-flags: -lcuda
// A driver-API program (no CUDA runtime calls): a context of its own, a module from a cubin
// file (cuModuleLoad), one from PTX text (cuModuleLoadData, JIT-compiled by the driver), one
// from the cubin's bytes with options (cuModuleLoadDataEx), launches with kernelParams and with
// `extra`, a module global, streams and events. The kernels come from drvapi_kernels.cuh, which
// the GPU-host harness builds into $VGPU_TEST_KERNEL_DIR/drvapi_kernels.{cubin,ptx}.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <cuda.h>

static int failures = 0;
#define DRV(call)                                                                         \
    do {                                                                                  \
        CUresult r_ = (call);                                                             \
        if (r_ != CUDA_SUCCESS) {                                                         \
            const char *n_ = "?";                                                         \
            cuGetErrorName(r_, &n_);                                                      \
            printf("FAILED %s:%d: %s = %s\n", __FILE__, __LINE__, #call, n_);             \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

static std::string slurp(const std::string &path) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) return "";
    std::string s;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

int main() {
    const char *dir = getenv("VGPU_TEST_KERNEL_DIR");
    if (!dir) {
        printf("FAILED: VGPU_TEST_KERNEL_DIR is not set\n");
        return 1;
    }
    std::string cubin_path = std::string(dir) + "/drvapi_kernels.cubin";
    std::string ptx = slurp(std::string(dir) + "/drvapi_kernels.ptx");
    std::string cubin = slurp(cubin_path);
    CHECK(!ptx.empty() && !cubin.empty());

    DRV(cuInit(0));
    int version = 0;
    DRV(cuDriverGetVersion(&version));
    CHECK(version >= 13000);
    CUdevice dev;
    DRV(cuDeviceGet(&dev, 0));
    char name[256];
    DRV(cuDeviceGetName(name, sizeof name, dev));
    CUcontext ctx;
    DRV(cuCtxCreate(&ctx, nullptr, 0, dev));

    // The context's limits as the driver reports them (the CUDA-in-graphics ones included).
    for (int l = CU_LIMIT_STACK_SIZE; l < CU_LIMIT_MAX; l++) {
        size_t v = 0;
        CUresult r = cuCtxGetLimit(&v, (CUlimit)l);
        printf("result: limit %d = %d %zu\n", l, (int)r, v);
    }

    CUmodule from_file, from_ptx, from_bytes;
    DRV(cuModuleLoad(&from_file, cubin_path.c_str()));
    DRV(cuModuleLoadData(&from_ptx, ptx.c_str()));
    char log[4096] = {0};
    CUjit_option opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {log, (void *)(size_t)sizeof log};
    DRV(cuModuleLoadDataEx(&from_bytes, cubin.data(), 2, opts, vals));

    const int n = 100000;
    CUdeviceptr x, y;
    DRV(cuMemAlloc(&x, n * sizeof(float)));
    DRV(cuMemAlloc(&y, n * sizeof(int)));
    std::vector<float> hx(n);
    for (int i = 0; i < n; i++) hx[i] = (float)i * 0.25f;
    DRV(cuMemcpyHtoD(x, hx.data(), n * sizeof(float)));

    CUstream s;
    DRV(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUevent start, stop;
    DRV(cuEventCreate(&start, CU_EVENT_DEFAULT));
    DRV(cuEventCreate(&stop, CU_EVENT_DEFAULT));

    // scale from the cubin file, with kernelParams.
    CUfunction scale_file, scale_ptx, iota_bytes, count_ptx;
    DRV(cuModuleGetFunction(&scale_file, from_file, "scale"));
    DRV(cuModuleGetFunction(&scale_ptx, from_ptx, "scale"));
    DRV(cuModuleGetFunction(&iota_bytes, from_bytes, "iota"));
    DRV(cuModuleGetFunction(&count_ptx, from_ptx, "count"));
    float a = 2.0f;
    int nn = n;
    void *args[] = {&x, &a, &nn};
    DRV(cuEventRecord(start, s));
    DRV(cuLaunchKernel(scale_file, (n + 255) / 256, 1, 1, 256, 1, 1, 0, s, args, nullptr));
    // scale from PTX, with `extra`: x *= 0.5 again, then x *= 3.
    struct { CUdeviceptr x; float a; int n; } packed = {x, 3.0f, n};
    size_t packed_size = sizeof packed;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE,
                     &packed_size, CU_LAUNCH_PARAM_END};
    DRV(cuLaunchKernel(scale_ptx, (n + 255) / 256, 1, 1, 256, 1, 1, 0, s, nullptr, extra));
    int base = 7;
    void *iargs[] = {&y, &base, &nn};
    DRV(cuLaunchKernel(iota_bytes, (n + 127) / 128, 1, 1, 128, 1, 1, 0, s, iargs, nullptr));
    // hits (a global of the PTX module) counts the multiples of 3 in y.
    CUdeviceptr hits;
    size_t hits_size = 0;
    DRV(cuModuleGetGlobal(&hits, &hits_size, from_ptx, "hits"));
    CHECK(hits_size == sizeof(int));
    DRV(cuMemsetD32Async(hits, 0, 1, s));
    void *cargs[] = {&y, &nn};
    DRV(cuLaunchKernel(count_ptx, (n + 255) / 256, 1, 1, 256, 1, 1, 0, s, cargs, nullptr));
    DRV(cuEventRecord(stop, s));
    DRV(cuEventSynchronize(stop));
    float ms = -1;
    DRV(cuEventElapsedTime(&ms, start, stop));
    CHECK(ms >= 0);

    std::vector<float> gx(n);
    std::vector<int> gy(n);
    int ghits = -1;
    DRV(cuMemcpyDtoH(gx.data(), x, n * sizeof(float)));
    DRV(cuMemcpyDtoH(gy.data(), y, n * sizeof(int)));
    DRV(cuMemcpyDtoH(&ghits, hits, sizeof ghits));
    int bad = 0, want_hits = 0;
    for (int i = 0; i < n; i++) {
        if (gx[i] != hx[i] * 6.0f) bad++;
        if (gy[i] != 7 + i) bad++;
        if ((7 + i) % 3 == 0) want_hits++;
    }
    CHECK(bad == 0);
    CHECK(ghits == want_hits);
    printf("result: scale and iota wrong %d, hits %d (want %d)\n", bad, ghits, want_hits);
    double sum = 0;
    for (int i = 0; i < n; i += 997) sum += gx[i];
    printf("result: checksum %.3f\n", sum);

    // A name no module has.
    CUfunction none;
    CHECK(cuModuleGetFunction(&none, from_ptx, "no_such_kernel") == CUDA_ERROR_NOT_FOUND);

    DRV(cuModuleUnload(from_file));
    DRV(cuModuleUnload(from_ptx));
    DRV(cuModuleUnload(from_bytes));
    DRV(cuMemFree(x));
    DRV(cuMemFree(y));
    DRV(cuStreamDestroy(s));
    DRV(cuEventDestroy(start));
    DRV(cuEventDestroy(stop));
    DRV(cuCtxDestroy(ctx));
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
