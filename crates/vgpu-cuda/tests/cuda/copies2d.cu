// 2D and 3D copies, 2D and 3D memsets, peer copies and host functions through the CUDA
// runtime on vgpu's libcuda.so.1, without user kernels: every direction (host, pitched device
// memory from cudaMallocPitch / cudaMalloc3D, packed device memory), sub-rectangles and
// sub-boxes, page-locked and pageable host memory, copies larger than a bounce buffer, the
// bytes between pitched rows left alone, and the order of cudaLaunchHostFunc and
// cudaStreamAddCallback against copies on their stream. Prints PASS as its last line when
// every check held (run by `cargo xtask cuda-programs` against vgpud's cpu backend; on a GPU
// host the same binary runs natively).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#include <cuda.h>
#include <cuda_runtime.h>
#include "check.h"

typedef unsigned char u8;

// The byte at (row, col) of test pattern `salt`.
static u8 pat(size_t row, size_t col, int salt) {
    return (u8)(row * 31 + col * 7 + salt * 13 + (row >> 3));
}

// Whether `got` (rows `pitch` bytes apart) holds pattern `salt` in its first `w` bytes of each
// of `h` rows, starting at pattern row `r0`, column `c0`, and `gap` in the rest of each row up
// to `pitch` (gap < 0: the rest is not looked at).
static bool rows_hold(const u8 *got, size_t pitch, size_t w, size_t h, int salt, size_t r0,
                      size_t c0, int gap) {
    for (size_t r = 0; r < h; r++) {
        for (size_t c = 0; c < pitch; c++) {
            u8 want;
            if (c < w) {
                want = pat(r0 + r, c0 + c, salt);
            } else if (gap >= 0) {
                want = (u8)gap;
            } else {
                break;
            }
            if (got[r * pitch + c] != want) {
                printf("row %zu col %zu: %#x, want %#x\n", r, c, got[r * pitch + c], want);
                return false;
            }
        }
    }
    return true;
}

static void fill_rows(u8 *p, size_t pitch, size_t w, size_t h, int salt, u8 gap) {
    for (size_t r = 0; r < h; r++)
        for (size_t c = 0; c < pitch; c++) p[r * pitch + c] = c < w ? pat(r, c, salt) : gap;
}

// ---- 2D copies and memsets -------------------------------------------------------------------

static void copies_2d() {
    const size_t W = 1000, H = 37, HP = W + 24;
    u8 *d1 = nullptr, *d2 = nullptr;
    size_t p1 = 0, p2 = 0;
    OK(cudaMallocPitch((void **)&d1, &p1, W, H));
    OK(cudaMallocPitch((void **)&d2, &p2, W, H));
    CHECK(p1 >= W && p2 >= W);
    // The bytes between rows must survive every pitched copy and memset.
    OK(cudaMemset(d1, 0xEE, p1 * H));
    OK(cudaMemset(d2, 0xEE, p2 * H));

    std::vector<u8> hs(HP * H), full(p1 * H), back((W + 5) * H);
    fill_rows(hs.data(), HP, W, H, 1, 0x11);

    // Host -> pitched device, then the whole allocation back.
    OK(cudaMemcpy2D(d1, p1, hs.data(), HP, W, H, cudaMemcpyHostToDevice));
    OK(cudaMemcpy(full.data(), d1, p1 * H, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(full.data(), p1, W, H, 1, 0, 0, 0xEE));

    // Device -> device between pitched allocations, then device -> host into another pitch.
    OK(cudaMemcpy2D(d2, p2, d1, p1, W, H, cudaMemcpyDeviceToDevice));
    memset(back.data(), 0x33, back.size());
    OK(cudaMemcpy2D(back.data(), W + 5, d2, p2, W, H, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(back.data(), W + 5, W, H, 1, 0, 0, 0x33));
    std::vector<u8> full2(p2 * H);
    OK(cudaMemcpy(full2.data(), d2, p2 * H, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(full2.data(), p2, W, H, 1, 0, 0, 0xEE));

    // A sub-rectangle: 100 x 10 at column 50, row 5, to packed host memory.
    std::vector<u8> blk(100 * 10);
    OK(cudaMemcpy2D(blk.data(), 100, d1 + 5 * p1 + 50, p1, 100, 10, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(blk.data(), 100, 100, 10, 1, 5, 50, -1));

    // Host -> host, and the direction from the pointers (cudaMemcpyDefault).
    std::vector<u8> hh(W * H);
    OK(cudaMemcpy2D(hh.data(), W, hs.data(), HP, W, H, cudaMemcpyHostToHost));
    CHECK(rows_hold(hh.data(), W, W, H, 1, 0, 0, -1));
    memset(hh.data(), 0, hh.size());
    OK(cudaMemcpy2D(hh.data(), W, d2, p2, W, H, cudaMemcpyDefault));
    CHECK(rows_hold(hh.data(), W, W, H, 1, 0, 0, -1));

    // Packed device memory (pitch == width): one copy each way.
    u8 *dp = nullptr;
    OK(cudaMalloc(&dp, W * H));
    OK(cudaMemcpy2D(dp, W, d1, p1, W, H, cudaMemcpyDeviceToDevice));
    memset(hh.data(), 0, hh.size());
    OK(cudaMemcpy2D(hh.data(), W, dp, W, W, H, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(hh.data(), W, W, H, 1, 0, 0, -1));

    // A row wider than a pitch is refused, and nothing else fails because of it.
    cudaError_t e = cudaMemcpy2D(d1, p1, hs.data(), HP, HP + 1, 2, cudaMemcpyHostToDevice);
    CHECK(e == cudaErrorInvalidPitchValue || e == cudaErrorInvalidValue);
    e = cudaMemcpy2D(d1, W - 1, hs.data(), HP, W, 2, cudaMemcpyHostToDevice);
    CHECK(e == cudaErrorInvalidPitchValue || e == cudaErrorInvalidValue);
    cudaGetLastError();
    OK(cudaMemcpy(full.data(), d1, p1 * H, cudaMemcpyDeviceToHost));
    CHECK(rows_hold(full.data(), p1, W, H, 1, 0, 0, 0xEE));

    // cudaMemset2D: the first W - 10 bytes of each row; the rest of the row and the gap stay.
    OK(cudaMemset2D(d1, p1, 0x5A, W - 10, H));
    OK(cudaMemcpy(full.data(), d1, p1 * H, cudaMemcpyDeviceToHost));
    bool ok = true;
    for (size_t r = 0; r < H && ok; r++)
        for (size_t c = 0; c < p1 && ok; c++) {
            u8 want = c < W - 10 ? 0x5A : c < W ? pat(r, c, 1) : 0xEE;
            ok = full[r * p1 + c] == want;
            if (!ok) printf("memset2d: row %zu col %zu: %#x, want %#x\n", r, c, full[r * p1 + c], want);
        }
    CHECK(ok);

    // On a stream: page-locked host rows both ways, a memset in between, in stream order.
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    u8 *ph = nullptr, *pb = nullptr;
    OK(cudaMallocHost(&ph, HP * H));
    OK(cudaMallocHost(&pb, W * H));
    fill_rows(ph, HP, W, H, 2, 0x22);
    OK(cudaMemcpy2DAsync(d2, p2, ph, HP, W, H, cudaMemcpyHostToDevice, s));
    OK(cudaMemset2DAsync(d2 + 3 * p2, p2, 0x44, 16, 2, s));
    OK(cudaMemcpy2DAsync(pb, W, d2, p2, W, H, cudaMemcpyDeviceToHost, s));
    OK(cudaStreamSynchronize(s));
    ok = true;
    for (size_t r = 0; r < H && ok; r++)
        for (size_t c = 0; c < W && ok; c++) {
            u8 want = (r == 3 || r == 4) && c < 16 ? 0x44 : pat(r, c, 2);
            ok = pb[r * W + c] == want;
        }
    CHECK(ok);
    // Pageable host rows on a stream.
    OK(cudaMemcpy2DAsync(d1, p1, hs.data(), HP, W, H, cudaMemcpyHostToDevice, s));
    memset(back.data(), 0x33, back.size());
    OK(cudaMemcpy2DAsync(back.data(), W + 5, d1, p1, W, H, cudaMemcpyDeviceToHost, s));
    OK(cudaStreamSynchronize(s));
    CHECK(rows_hold(back.data(), W + 5, W, H, 1, 0, 0, 0x33));

    // A pitched copy larger than any bounce buffer: 3000 x 2000 bytes, both ways.
    const size_t BW = 3000, BH = 2000;
    u8 *db = nullptr;
    size_t bp = 0;
    OK(cudaMallocPitch((void **)&db, &bp, BW, BH));
    std::vector<u8> big(BW * BH), bigback(BW * BH, 0);
    fill_rows(big.data(), BW, BW, BH, 3, 0);
    OK(cudaMemcpy2D(db, bp, big.data(), BW, BW, BH, cudaMemcpyHostToDevice));
    OK(cudaMemcpy2D(bigback.data(), BW, db, bp, BW, BH, cudaMemcpyDeviceToHost));
    CHECK(memcmp(big.data(), bigback.data(), big.size()) == 0);

    OK(cudaFreeHost(ph));
    OK(cudaFreeHost(pb));
    OK(cudaStreamDestroy(s));
    OK(cudaFree(db));
    OK(cudaFree(dp));
    OK(cudaFree(d1));
    OK(cudaFree(d2));
}

// ---- 16- and 32-bit 2D memsets (driver API: the runtime has only byte memsets) -----------

typedef CUresult (*MemsetD2D16)(CUdeviceptr, size_t, unsigned short, size_t, size_t);
typedef CUresult (*MemsetD2D32)(CUdeviceptr, size_t, unsigned int, size_t, size_t);

static void wide_memsets_2d() {
    void *f16 = nullptr, *f32 = nullptr;
    cudaDriverEntryPointQueryResult q;
    OK(cudaGetDriverEntryPointByVersion("cuMemsetD2D16", &f16, 13000, cudaEnableDefault, &q));
    CHECK(q == cudaDriverEntryPointSuccess && f16 != nullptr);
    OK(cudaGetDriverEntryPointByVersion("cuMemsetD2D32", &f32, 13000, cudaEnableDefault, &q));
    CHECK(q == cudaDriverEntryPointSuccess && f32 != nullptr);
    if (!f16 || !f32) return;
    MemsetD2D16 d2d16 = (MemsetD2D16)f16;
    MemsetD2D32 d2d32 = (MemsetD2D32)f32;
    const size_t W = 300, H = 9;
    u8 *d = nullptr;
    size_t p = 0;
    OK(cudaMallocPitch((void **)&d, &p, W, H));
    OK(cudaMemset(d, 0xEE, p * H));
    CUdeviceptr base = (CUdeviceptr)d;
    // Bytes [0, 200): 50 words; [202, 268): 33 half-words of two different bytes, starting
    // 2 bytes past a 4-byte boundary, an odd count; [270, 300): 15 half-words of equal bytes.
    CHECK(d2d32(base, p, 0x11223344u, 50, H) == CUDA_SUCCESS);
    CHECK(d2d16(base + 202, p, 0xA1B2, 33, H) == CUDA_SUCCESS);
    CHECK(d2d16(base + 270, p, 0x5555, 15, H) == CUDA_SUCCESS);
    // The documented refusals: misaligned start or pitch, rows wider than the pitch.
    CHECK(d2d32(base + 2, p, 1, 4, 2) == CUDA_ERROR_INVALID_VALUE);
    CHECK(d2d32(base, p - 2, 1, 4, 2) == CUDA_ERROR_INVALID_VALUE);
    CHECK(d2d16(base + 1, p, 1, 4, 2) == CUDA_ERROR_INVALID_VALUE);
    CHECK(d2d32(base, p, 1, p / 4 + 1, 2) == CUDA_ERROR_INVALID_VALUE);
    OK(cudaDeviceSynchronize());
    std::vector<u8> full(p * H);
    OK(cudaMemcpy(full.data(), d, p * H, cudaMemcpyDeviceToHost));
    bool ok = true;
    static const u8 w32[4] = {0x44, 0x33, 0x22, 0x11};
    for (size_t r = 0; r < H && ok; r++)
        for (size_t c = 0; c < p && ok; c++) {
            u8 want = 0xEE;
            if (c < 200) want = w32[c % 4];
            else if (c >= 202 && c < 268) want = (c - 202) % 2 ? 0xA1 : 0xB2;
            else if (c >= 270 && c < 300) want = 0x55;
            ok = full[r * p + c] == want;
            if (!ok) printf("wide memsets: row %zu col %zu: %#x, want %#x\n", r, c, full[r * p + c], want);
        }
    CHECK(ok);
    OK(cudaFree(d));
}

// ---- 3D copies and memsets -------------------------------------------------------------------

// The byte at (x, y, z) of the volume pattern.
static u8 vox(size_t x, size_t y, size_t z) { return (u8)(x * 3 + y * 17 + z * 101); }

static void copies_3d() {
    const size_t X = 200, Y = 20, Z = 6;
    cudaExtent ext = make_cudaExtent(X, Y, Z);
    cudaPitchedPtr dv, dw;
    OK(cudaMalloc3D(&dv, ext));
    OK(cudaMalloc3D(&dw, ext));
    CHECK(dv.pitch >= X);
    std::vector<u8> hv(X * Y * Z);
    for (size_t z = 0; z < Z; z++)
        for (size_t y = 0; y < Y; y++)
            for (size_t x = 0; x < X; x++) hv[(z * Y + y) * X + x] = vox(x, y, z);

    // Host volume -> pitched device volume.
    cudaMemcpy3DParms m = {};
    m.srcPtr = make_cudaPitchedPtr(hv.data(), X, X, Y);
    m.dstPtr = dv;
    m.extent = ext;
    m.kind = cudaMemcpyHostToDevice;
    OK(cudaMemcpy3D(&m));

    // Device -> device.
    m = {};
    m.srcPtr = dv;
    m.dstPtr = dw;
    m.extent = ext;
    m.kind = cudaMemcpyDeviceToDevice;
    OK(cudaMemcpy3D(&m));

    // A sub-box (x 10.., y 2.., z 1..; 50 x 8 x 3) to a padded host volume (pitch 64, 9 rows a
    // slice) at (x 4, y 1, z 0).
    const size_t HPITCH = 64, HROWS = 9;
    std::vector<u8> hb(HPITCH * HROWS * 3, 0x99);
    m = {};
    m.srcPtr = dw;
    m.srcPos = make_cudaPos(10, 2, 1);
    m.dstPtr = make_cudaPitchedPtr(hb.data(), HPITCH, HPITCH, HROWS);
    m.dstPos = make_cudaPos(4, 1, 0);
    m.extent = make_cudaExtent(50, 8, 3);
    m.kind = cudaMemcpyDeviceToHost;
    OK(cudaMemcpy3D(&m));
    bool ok = true;
    for (size_t z = 0; z < 3 && ok; z++)
        for (size_t y = 0; y < HROWS && ok; y++)
            for (size_t x = 0; x < HPITCH && ok; x++) {
                bool in = x >= 4 && x < 54 && y >= 1 && y < 9;
                u8 want = in ? vox(x - 4 + 10, y - 1 + 2, z + 1) : 0x99;
                ok = hb[(z * HROWS + y) * HPITCH + x] == want;
                if (!ok) printf("3d sub-box: (%zu,%zu,%zu): %#x, want %#x\n", x, y, z,
                                hb[(z * HROWS + y) * HPITCH + x], want);
            }
    CHECK(ok);

    // On a stream, to page-locked memory.
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    u8 *pv = nullptr;
    OK(cudaMallocHost(&pv, X * Y * Z));
    memset(pv, 0, X * Y * Z);
    m = {};
    m.srcPtr = dw;
    m.dstPtr = make_cudaPitchedPtr(pv, X, X, Y);
    m.extent = ext;
    m.kind = cudaMemcpyDeviceToHost;
    OK(cudaMemcpy3DAsync(&m, s));
    OK(cudaStreamSynchronize(s));
    CHECK(memcmp(pv, hv.data(), X * Y * Z) == 0);

    // cudaMemset3D of a box inside the volume, then the whole volume back.
    cudaPitchedPtr inner = dv;
    inner.ptr = (u8 *)dv.ptr + 2 * dv.pitch * Y + 3 * dv.pitch + 5;
    OK(cudaMemset3D(inner, 0x7E, make_cudaExtent(20, 4, 2)));
    std::vector<u8> all(X * Y * Z);
    m = {};
    m.srcPtr = dv;
    m.dstPtr = make_cudaPitchedPtr(all.data(), X, X, Y);
    m.extent = ext;
    m.kind = cudaMemcpyDeviceToHost;
    OK(cudaMemcpy3D(&m));
    ok = true;
    for (size_t z = 0; z < Z && ok; z++)
        for (size_t y = 0; y < Y && ok; y++)
            for (size_t x = 0; x < X && ok; x++) {
                bool in = z >= 2 && z < 4 && y >= 3 && y < 7 && x >= 5 && x < 25;
                ok = all[(z * Y + y) * X + x] == (in ? 0x7E : vox(x, y, z));
            }
    CHECK(ok);

    OK(cudaFreeHost(pv));
    OK(cudaStreamDestroy(s));
    OK(cudaFree(dv.ptr));
    OK(cudaFree(dw.ptr));
}

// ---- peer copies -----------------------------------------------------------------------------

static void peer_copies() {
    const size_t N = 1 << 16;
    std::vector<u8> h(N), back(N, 0);
    for (size_t i = 0; i < N; i++) h[i] = pat(i >> 8, i & 255, 4);
    u8 *a = nullptr, *b = nullptr;
    OK(cudaMalloc(&a, N));
    OK(cudaMalloc(&b, N));
    OK(cudaMemcpy(a, h.data(), N, cudaMemcpyHostToDevice));
    OK(cudaMemcpyPeer(b, 0, a, 0, N));
    OK(cudaMemcpy(back.data(), b, N, cudaMemcpyDeviceToHost));
    CHECK(memcmp(back.data(), h.data(), N) == 0);
    OK(cudaMemset(b, 0, N));
    OK(cudaMemcpyPeerAsync(b, 0, a, 0, N / 2, 0));
    OK(cudaMemcpy(back.data(), b, N, cudaMemcpyDeviceToHost));
    CHECK(memcmp(back.data(), h.data(), N / 2) == 0);
    CHECK(back[N - 1] == 0);
    OK(cudaFree(a));
    OK(cudaFree(b));
}

// ---- host functions --------------------------------------------------------------------------

struct HostCtx {
    const u8 *seen;        // page-locked bytes the function looks at
    u8 *writes;            // page-locked bytes the function writes
    size_t n;
    int want;              // the pattern salt `seen` must hold
    std::atomic<int> ran{0};
    bool saw_earlier_work = false;
};

// Checks that the stream's earlier copies completed before it runs.
static void CUDART_CB look(void *p) {
    HostCtx *c = (HostCtx *)p;
    bool ok = true;
    for (size_t i = 0; i < c->n && ok; i++) ok = c->seen[i] == pat(i >> 8, i & 255, c->want);
    c->saw_earlier_work = ok;
    c->ran++;
}

// Takes its time, then writes the bytes a later copy on the stream reads: that copy must see
// them, so it must not start before this returns.
static void CUDART_CB slow_write(void *p) {
    HostCtx *c = (HostCtx *)p;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    for (size_t i = 0; i < c->n; i++) c->writes[i] = 0xC3;
    c->ran++;
}

// What the stream callbacks saw, in the order they ran.
static struct {
    cudaStream_t stream[4];
    cudaError_t status[4];
    int tag[4];
    std::atomic<int> n{0};
} cb_log;

static void CUDART_CB logged(cudaStream_t s, cudaError_t status, void *tag) {
    int i = cb_log.n++;
    if (i < 4) {
        cb_log.stream[i] = s;
        cb_log.status[i] = status;
        cb_log.tag[i] = *(int *)tag;
    }
}

static void host_functions() {
    const size_t N = 1 << 20;
    cudaStream_t s;
    OK(cudaStreamCreate(&s));
    u8 *src = nullptr, *dst = nullptr, *dbuf = nullptr;
    OK(cudaMallocHost(&src, N));
    OK(cudaMallocHost(&dst, N));
    OK(cudaMalloc(&dbuf, N));
    for (size_t i = 0; i < N; i++) src[i] = pat(i >> 8, i & 255, 5);
    memset(dst, 0, N);

    // The function runs after the stream's earlier copies completed.
    HostCtx c;
    c.seen = dst;
    c.writes = src;
    c.n = N;
    c.want = 5;
    OK(cudaMemcpyAsync(dbuf, src, N, cudaMemcpyHostToDevice, s));
    OK(cudaMemcpyAsync(dst, dbuf, N, cudaMemcpyDeviceToHost, s));
    OK(cudaLaunchHostFunc(s, look, &c));
    // Later copies on the stream do not start before the function returned.
    OK(cudaLaunchHostFunc(s, slow_write, &c));
    OK(cudaMemcpyAsync(dbuf, src, N, cudaMemcpyHostToDevice, s));
    OK(cudaMemcpyAsync(dst, dbuf, N, cudaMemcpyDeviceToHost, s));
    OK(cudaStreamSynchronize(s));
    CHECK(c.ran == 2);
    CHECK(c.saw_earlier_work);
    bool ok = true;
    for (size_t i = 0; i < N && ok; i++) ok = dst[i] == 0xC3;
    CHECK(ok);

    // Stream callbacks: in order, with their stream and a success status.
    static int tags[4] = {0, 1, 2, 3};
    OK(cudaMemsetAsync(dbuf, 1, N, s));
    OK(cudaStreamAddCallback(s, logged, &tags[0], 0));
    OK(cudaMemsetAsync(dbuf, 2, N, s));
    OK(cudaStreamAddCallback(s, logged, &tags[1], 0));
    OK(cudaStreamAddCallback(s, logged, &tags[2], 0));
    OK(cudaStreamSynchronize(s));
    CHECK(cb_log.n == 3);
    for (int i = 0; i < 3; i++) {
        CHECK(cb_log.tag[i] == i);
        CHECK(cb_log.stream[i] == s);
        CHECK(cb_log.status[i] == cudaSuccess);
    }
    FAILS_WITH(cudaStreamAddCallback(s, logged, &tags[3], 1), cudaErrorInvalidValue);
    cudaGetLastError();
    CHECK(cb_log.n == 3);

    // On the legacy default stream.
    memset(dst, 0, N);
    c.ran = 0;
    c.saw_earlier_work = false;
    for (size_t i = 0; i < N; i++) src[i] = pat(i >> 8, i & 255, 6);
    c.want = 6;
    OK(cudaMemcpyAsync(dbuf, src, N, cudaMemcpyHostToDevice, 0));
    OK(cudaMemcpyAsync(dst, dbuf, N, cudaMemcpyDeviceToHost, 0));
    OK(cudaLaunchHostFunc(0, look, &c));
    OK(cudaDeviceSynchronize());
    CHECK(c.ran == 1);
    CHECK(c.saw_earlier_work);

    // How long the call takes behind 64 MiB of device work (information, not a check: vgpu's
    // call returns after the earlier work and the function, NVIDIA's at once).
    const size_t BIG = 64 << 20;
    u8 *ba = nullptr, *bb = nullptr;
    OK(cudaMalloc(&ba, BIG));
    OK(cudaMalloc(&bb, BIG));
    typedef std::chrono::steady_clock clk;
    auto ms_since = [](clk::time_point t) {
        return std::chrono::duration<double, std::milli>(clk::now() - t).count();
    };
    auto t0 = clk::now();
    OK(cudaMemsetAsync(ba, 9, BIG, s));
    OK(cudaMemcpyAsync(bb, ba, BIG, cudaMemcpyDeviceToDevice, s));
    OK(cudaStreamSynchronize(s));
    double work_ms = ms_since(t0);
    c.ran = 0;
    OK(cudaMemsetAsync(ba, 9, BIG, s));
    OK(cudaMemcpyAsync(bb, ba, BIG, cudaMemcpyDeviceToDevice, s));
    t0 = clk::now();
    OK(cudaLaunchHostFunc(s, slow_write, &c));
    double call_ms = ms_since(t0);
    OK(cudaStreamSynchronize(s));
    double all_ms = ms_since(t0);
    CHECK(c.ran == 1);
    printf("host function (30 ms) behind a 64 MiB fill and copy (alone: %.1f ms): the call took "
           "%.1f ms, synchronized after %.1f ms\n", work_ms, call_ms, all_ms);

    OK(cudaFree(ba));
    OK(cudaFree(bb));
    OK(cudaFree(dbuf));
    OK(cudaFreeHost(src));
    OK(cudaFreeHost(dst));
    OK(cudaStreamDestroy(s));
}

int main() {
    OK(cudaSetDevice(0));
    copies_2d();
    wide_memsets_2d();
    copies_3d();
    peer_copies();
    host_functions();
    OK(cudaDeviceSynchronize());
    return finish();
}
