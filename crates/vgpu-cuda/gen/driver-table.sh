#!/usr/bin/env bash
# Derives vgpu's cuGetProcAddress table and export list from NVIDIA's driver on the GPU host:
#   bash crates/vgpu-cuda/gen/driver-table.sh OUTDIR
# writes OUTDIR/driver-exports.txt (the real libcuda's exported functions) and
# OUTDIR/gpa-table.tsv (gpa_table.c's rows). Check both in under crates/vgpu-cuda/data/.
set -euo pipefail
out=${1:?usage: driver-table.sh OUTDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib=""
for c in /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1; do
    [ -e "$c" ] && { lib=$c; break; }
done
[ -n "$lib" ] || lib=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -n "$lib" ] || { echo "driver-table: no libcuda.so.1 found" >&2; exit 1; }
mkdir -p "$out"
real=$(readlink -f "$lib")
echo "driver-table: $lib -> $real"
nm -D --defined-only "$real" | awk '$2=="T"{print $3}' | sort -u > "$out/driver-exports.txt"
echo "driver-table: $(wc -l < "$out/driver-exports.txt") exported functions"
gcc -O2 -Wall -o "$out/gpa_table" "$here/gpa_table.c" -ldl
"$out/gpa_table" "$lib" "$out/driver-exports.txt" > "$out/gpa-table.tsv"
rm -f "$out/gpa_table"
echo "driver-table: $(grep -vc '^#' "$out/gpa-table.tsv") rows"
gcc -O2 -Wall -o "$out/error_table" "$here/error_table.c" -ldl
"$out/error_table" "$lib" > "$out/error-table.tsv"
rm -f "$out/error_table"
echo "driver-table: $(wc -l < "$out/error-table.tsv") error codes"
