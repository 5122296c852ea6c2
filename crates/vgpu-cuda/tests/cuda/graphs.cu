// Stream capture and CUDA graphs from a runtime program, without kernels: copies through
// page-locked memory and memsets captured on a stream and a second stream forked from it and
// joined back through events, the graph instantiated and replayed with new inputs (the replay
// reads and writes the same page-locked bytes), and the rules a capture enforces: no capture
// on the legacy stream, no synchronisation or query of a capturing stream or of an event
// recorded in the capture, no unsafe call (cudaDeviceSynchronize, cudaMalloc) under a global
// capture unless the thread is relaxed; each of those invalidates the capture. Through vgpu a
// copy from pageable memory does too (NVIDIA's driver captures it and reads the memory at each
// replay; vgpu's GPU cannot reach the program's pageable memory). Prints PASS as its last line when every
// check held (run by `cargo xtask cuda-programs` against vgpud's cpu backend; on a GPU host
// the same binary runs natively).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include "check.h"

static const size_t N = 4096; // ints

// A capture of `s` that `bad` breaks: `bad` answers `want`, the end answers invalidated and
// leaves no graph.
template <typename F>
static void broken_capture(cudaStream_t s, cudaStreamCaptureMode mode, F bad, cudaError_t want,
                           const char *what) {
    OK(cudaStreamBeginCapture(s, mode));
    cudaError_t e = bad();
    if (e != want) {
        printf("FAILED %s: %s, want %s\n", what, cudaGetErrorName(e), cudaGetErrorName(want));
        failures++;
    }
    cudaStreamCaptureStatus st;
    OK(cudaStreamIsCapturing(s, &st));
    CHECK(st == cudaStreamCaptureStatusInvalidated);
    cudaGraph_t g = (cudaGraph_t)0x1;
    FAILS_WITH(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    CHECK(g == nullptr);
    OK(cudaStreamIsCapturing(s, &st));
    CHECK(st == cudaStreamCaptureStatusNone);
    // The runtime keeps the error of the failed call as its last one.
    cudaGetLastError();
}

int main() {
    const size_t bytes = N * sizeof(int), half = bytes / 2;
    int *hin = nullptr, *hout = nullptr, *dA = nullptr, *dB = nullptr;
    OK(cudaMallocHost(&hin, bytes));
    OK(cudaMallocHost(&hout, bytes));
    OK(cudaMalloc(&dA, bytes));
    OK(cudaMalloc(&dB, bytes));
    cudaStream_t s, s2;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t fork, join;
    OK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    OK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));

    // The capture: hin → dA; dB zeroed; on s2 (forked) dA's first half → dB; back on s,
    // dB's second half filled with 0x07 bytes; dB → hout.
    memset(hout, 0xab, bytes);
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus st;
    unsigned long long id = 0;
    OK(cudaStreamGetCaptureInfo(s, &st, &id));
    CHECK(st == cudaStreamCaptureStatusActive && id != 0);
    OK(cudaMemcpyAsync(dA, hin, bytes, cudaMemcpyHostToDevice, s));
    OK(cudaMemsetAsync(dB, 0, bytes, s));
    OK(cudaEventRecord(fork, s));
    OK(cudaStreamIsCapturing(s2, &st));
    CHECK(st == cudaStreamCaptureStatusNone);
    OK(cudaStreamWaitEvent(s2, fork, 0));
    OK(cudaStreamIsCapturing(s2, &st));
    CHECK(st == cudaStreamCaptureStatusActive);
    unsigned long long id2 = 0;
    OK(cudaStreamGetCaptureInfo(s2, &st, &id2));
    CHECK(id2 == id);
    OK(cudaMemcpyAsync(dB, dA, half, cudaMemcpyDeviceToDevice, s2));
    OK(cudaEventRecord(join, s2));
    OK(cudaStreamWaitEvent(s, join, 0));
    OK(cudaMemsetAsync((char *)dB + half, 7, half, s));
    OK(cudaMemcpyAsync(hout, dB, bytes, cudaMemcpyDeviceToHost, s));
    // Nothing ran.
    CHECK(hout[0] == (int)0xabababab && hout[N - 1] == (int)0xabababab);
    cudaGraph_t graph = nullptr;
    OK(cudaStreamEndCapture(s, &graph));
    CHECK(graph != nullptr);
    OK(cudaStreamIsCapturing(s2, &st));
    CHECK(st == cudaStreamCaptureStatusNone);
    cudaGraphExec_t exec = nullptr;
    OK(cudaGraphInstantiate(&exec, graph, 0));
    OK(cudaGraphUpload(exec, s));

    // Replays with new inputs, on the capturing stream and on another one.
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < N; i++) hin[i] = (int)(i * 3 + round * 1000);
        memset(hout, 0, bytes);
        cudaStream_t on = round % 2 ? s2 : s;
        OK(cudaGraphLaunch(exec, on));
        OK(cudaStreamSynchronize(on));
        int bad = 0;
        for (size_t i = 0; i < N / 2; i++) bad += hout[i] != hin[i];
        for (size_t i = N / 2; i < N; i++) bad += hout[i] != 0x07070707;
        if (bad) {
            printf("FAILED replay %d: %d wrong values\n", round, bad);
            failures++;
        }
    }
    // A graph launched twice back to back, then waited for once.
    for (size_t i = 0; i < N; i++) hin[i] = -(int)i;
    OK(cudaGraphLaunch(exec, s));
    OK(cudaGraphLaunch(exec, s));
    OK(cudaDeviceSynchronize());
    CHECK(hout[5] == -5 && hout[N - 1] == 0x07070707);

    // The executable graph outlives its graph.
    OK(cudaGraphDestroy(graph));
    OK(cudaGraphLaunch(exec, s));
    OK(cudaStreamSynchronize(s));
    OK(cudaGraphExecDestroy(exec));

    // No capture on the legacy default stream.
    FAILS_WITH(cudaStreamBeginCapture(cudaStreamLegacy, cudaStreamCaptureModeGlobal),
               cudaErrorStreamCaptureUnsupported);
    cudaGetLastError();

    // What breaks a capture.
    broken_capture(s, cudaStreamCaptureModeGlobal, [&] { return cudaStreamSynchronize(s); },
                   cudaErrorStreamCaptureUnsupported, "synchronising a capturing stream");
    broken_capture(s, cudaStreamCaptureModeGlobal, [&] { return cudaStreamQuery(s); },
                   cudaErrorStreamCaptureUnsupported, "querying a capturing stream");
    broken_capture(
        s, cudaStreamCaptureModeGlobal,
        [&] {
            OK(cudaEventRecord(join, s));
            return cudaEventQuery(join);
        },
        cudaErrorCapturedEvent, "querying an event recorded in the capture");
    if (getenv("VGPU_SOCKET")) {
        std::vector<int> pageable(N, 1);
        broken_capture(
            s, cudaStreamCaptureModeGlobal,
            [&] { return cudaMemcpyAsync(dA, pageable.data(), bytes, cudaMemcpyHostToDevice, s); },
            cudaErrorStreamCaptureUnsupported, "a pageable copy (through vgpu)");
    }
    broken_capture(s, cudaStreamCaptureModeGlobal, [&] { return cudaDeviceSynchronize(); },
                   cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize (global mode)");
    broken_capture(
        s, cudaStreamCaptureModeThreadLocal,
        [&] {
            void *p = nullptr;
            return cudaMalloc(&p, 256);
        },
        cudaErrorStreamCaptureUnsupported, "cudaMalloc (thread-local mode)");

    // A relaxed capture, or a relaxed thread, may make unsafe calls.
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    int *extra = nullptr;
    OK(cudaMalloc(&extra, 256));
    OK(cudaMemsetAsync(extra, 1, 256, s));
    cudaGraph_t g2 = nullptr;
    OK(cudaStreamEndCapture(s, &g2));
    OK(cudaGraphDestroy(g2));
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    OK(cudaThreadExchangeStreamCaptureMode(&mode));
    CHECK(mode == cudaStreamCaptureModeGlobal);
    OK(cudaFree(extra));
    OK(cudaThreadExchangeStreamCaptureMode(&mode));
    CHECK(mode == cudaStreamCaptureModeRelaxed);
    OK(cudaMemsetAsync(dA, 0, bytes, s));
    OK(cudaStreamEndCapture(s, &g2));
    CHECK(g2 != nullptr);
    OK(cudaGraphDestroy(g2));
    // Ending a capture that never began.
    FAILS_WITH(cudaStreamEndCapture(s, &g2), cudaErrorIllegalState);
    cudaGetLastError();

    OK(cudaEventDestroy(fork));
    OK(cudaEventDestroy(join));
    OK(cudaStreamDestroy(s));
    OK(cudaStreamDestroy(s2));
    OK(cudaFree(dA));
    OK(cudaFree(dB));
    OK(cudaFreeHost(hin));
    OK(cudaFreeHost(hout));
    return finish();
}
