#!/usr/bin/env bash
# Writes data/nvml-exports.txt: every function NVIDIA's NVML declares in nvml.h (the NVML 13
# header of the pip wheel `nvidia-nvml-dev` 13.0.x, CUDA 13.0), the versioned names and the
# unversioned ones the header keeps for old binaries (NVML_NO_UNVERSIONED_FUNC_DEFS), one a line.
# vgpu's libnvidia-ml.so.1 exports each of them (build.rs), so that dlsym of any finds one.
#
# Usage: gen/nvml-exports.sh PATH/TO/nvml.h > data/nvml-exports.txt
set -euo pipefail
header=${1:?usage: $0 PATH/TO/nvml.h}
echo "# Functions of NVML 13 (nvml.h of nvidia-nvml-dev 13.0), from gen/nvml-exports.sh."
grep -o 'DECLDIR *\(char\* *\)\?nvml[A-Za-z0-9_]* *(' "$header" | sed 's/.*\(nvml[A-Za-z0-9_]*\).*/\1/' | LC_ALL=C sort -u
