#!/usr/bin/env bash
# A/B of `vgpu-bench gpu` between two builds, alternated (old, new, old, new) on one GPU host.
# Put each build's stripped release `vgpud` and `vgpu-bench` in DIR/old and DIR/new, copy this
# script to DIR, and run `bash DIR/gpu-ab.sh OUTDIR` there (each pass starts its own vgpud).
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?out dir}
LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
for i in 1 2; do
  for v in old new; do
    VGPUD="$here/$v/vgpud" timeout 120 "$here/$v/vgpu-bench" gpu --json "$out/$v-$i.json" >"$out/$v-$i.log" 2>&1
    echo "$v $i rc=$?"
    grep -E "sync_launch_p50|async_launch|copy_h2d_1MiB|copy_d2h_1MiB" "$out/$v-$i.log"
  done
done
