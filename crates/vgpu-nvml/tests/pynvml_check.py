"""NVIDIA's Python bindings (the `nvidia-ml-py` wheel, imported as `pynvml`) on vgpu's
libnvidia-ml.so.1, as PyTorch's torch.cuda.utilization / memory_usage / list_gpu_processes
call them. Run by `cargo xtask cuda-programs` with LD_LIBRARY_PATH naming a folder that holds
libnvidia-ml.so.1 and libcuda.so.1 (vgpu's), VGPU_SOCKET a vgpud (cpu backend) VM socket and
VGPU_EXPECT_TOTAL that VM's memory quota in bytes. Prints PASS last when every check held."""

import os
import sys

import pynvml


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


pynvml.nvmlInit()
check(pynvml.nvmlDeviceGetCount() == 1, "one device")
h = pynvml.nvmlDeviceGetHandleByIndex(0)
name = pynvml.nvmlDeviceGetName(h)
uuid = pynvml.nvmlDeviceGetUUID(h)
print(f"name {name!r}, uuid {uuid}")
check(name == "vgpu cpu reference device", f"name {name!r}")
check(uuid.startswith("GPU-") and len(uuid) == 40, f"uuid {uuid!r}")
same = pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
check(pynvml.nvmlDeviceGetUUID(same) == uuid, "handle by UUID")
pci = pynvml.nvmlDeviceGetPciInfo(h)
print(f"pci {pci.busId}")
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
print(f"memory total {mem.total} used {mem.used} free {mem.free}")
check(mem.total == int(os.environ["VGPU_EXPECT_TOTAL"]), "total = the VM's quota")
check(mem.used + mem.free == mem.total, "used + free = total")
mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
check((mem2.total, mem2.used) == (mem.total, mem.used), "memory v2")
util = pynvml.nvmlDeviceGetUtilizationRates(h)
print(f"utilisation gpu {util.gpu}% memory {util.memory}%")
check(0 <= util.gpu <= 100, "utilisation in range")
check(pynvml.nvmlDeviceGetComputeRunningProcesses(h) == [], "no CUDA in this process")
check(pynvml.nvmlDeviceGetCudaComputeCapability(h) == (9, 0), "compute capability 9.0")
check(pynvml.nvmlSystemGetCudaDriverVersion() == 13000, "CUDA 13.0")
try:
    pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    check(False, "temperature is not supported")
except pynvml.NVMLError_NotSupported:
    pass
try:
    pynvml.nvmlDeviceGetHandleByIndex(1)
    check(False, "index 1 is invalid")
except pynvml.NVMLError_InvalidArgument:
    pass
pynvml.nvmlShutdown()
print("PASS")
