#!/usr/bin/env bash
# The GPU-host suite of vgpu (issue 4), run from the folder `cargo xtask gpu-check` prepared.
# That host has no Rust toolchain, no QEMU and no network: everything it needs is in this folder.
#
# Usage: bash run.sh OUTDIR [--only STAGE[,STAGE...]]     (OUTDIR defaults to $OUT)
#   stages, in order: env, conformance, bench, cuda, cuda-bench, frameworks, fw-bench, tenants,
#   breakdown, wait, sched, multigpu (two GPUs), vm, cuda-vm, tenancy, soak (10 minutes: run it
#   on its own, `--only soak`)
# Writes OUTDIR/report.json, OUTDIR/report.txt, one log per stage, the benchmark's JSON and
# the VM's serial log. Exit status 0 only when every stage that ran passed (a test executable
# missing from this folder counts as a failure: the suite is incomplete).
#
# Environment:
#   VGPU_GUEST_ARGS   arguments of the guest's vgpu-smi, commas for spaces (default: selftest)
#   VGPU_BENCH_ARGS   extra arguments of `vgpu-bench gpu` (e.g. "--sgemm-reps 5")
#   VGPU_SCHED_ARGS   extra arguments of `vgpu-bench sched --backend cuda` (e.g. "--gpu-blocks 1056")
#   VGPU_WAIT_ARGS    extra arguments of `vgpu-bench wait --stage host --backend cuda` (e.g. "--rounds 5")
#   VGPU_SCHED_TIMEOUT  seconds the sched stage may run (default 300)
#   VGPU_VM_TIMEOUT   seconds the VM may run (default 240)
#   VGPU_SOAK_MINUTES  minutes of the soak stage (default 10)
#   VGPU_CHECK_BACKEND  vgpud backend of the vm stage (default cuda; cpu only to test this
#                     script on a machine without a GPU: the report then says so)
#   VGPU_CUDA_VM_BACKEND  the same for the cuda-vm stage (with cpu: no native run, and a
#                     kernel-free VGPU_CUDA_VM_PROGRAM such as cuda/runtime_basics.cu)
#   VGPU_CUDA_VM_PROGRAM  the .cu file of the cuda-vm stage (default cuda-gpu/vecadd.cu)
#   VGPU_NVCC         nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
#   VGPU_NVCC_FLAGS   extra nvcc flags of the cuda-vm stage (e.g. -I/-L of a pip toolkit)
#   VGPU_PYTHON       the Python of the frameworks stage (default python3): PyTorch, CuPy,
#                     numba-cuda, JAX, cuda-bindings, each skipped when it does not import
#   VGPU_FW_ONLY      the frameworks stage's scripts, commas between (default all: torch,
#                     cupy,numba,jax,cuda_bindings), e.g. to split the stage across commands
#   VGPU_FW_TIMEOUT   seconds each framework script may run, per run (default 240; the traced
#                     re-run of a failing one gets VGPU_FW_TRACE_TIMEOUT, default 120)
#   VGPU_FW_BENCH_RUNS  runs of each side in the fw-bench stage (default 3); each may take
#                     VGPU_FW_BENCH_TIMEOUT seconds (default 600)
#   VGPU_FW_BACKEND   vgpud backend of the frameworks stage (default cuda; cpu only to test
#                     this script without a GPU: no native runs, no kernels, the report says so)
#   VGPU_TENANTS_WINDOW  seconds of the tenants stage's pool-weight window (default 20)
#   VGPU_TENANTS_PRIORITY_WINDOW  seconds of its priority window (default 10, at most 15)
#   VGPU_TENANTS_TOLERANCE  its share tolerance, absolute (default 0.05 = 5 percentage points)
#   VGPU_TENANTS_DEPTH  vgpud's device_depth there (default 2); VGPU_TENANTS_N matrix size
#                     (default 4096); VGPU_TENANTS_REF_SECONDS the native run (default 10);
#                     VGPU_TENANTS_BACKEND (default cuda; cpu only to try the stage's flow)
set -uo pipefail

here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
out=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=${2:-}; shift 2 || { echo "run.sh: --only needs a value" >&2; exit 2; } ;;
    --only=*) only=${1#--only=}; shift ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
out=${out:-${OUT:-}}
if [ -z "$out" ]; then
  echo "usage: bash run.sh OUTDIR [--only env,conformance,bench,cuda,cuda-bench,frameworks,fw-bench,tenants,breakdown,wait,sched,multigpu,vm,cuda-vm,tenancy,soak]   (or set OUT)" >&2
  exit 2
fi
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)

# CUDA libraries of the GPU host: libcuda.so.1 (driver), libnvrtc.so.13 (toolkit).
# (The frameworks stage runs Python with the path as it was: the wheels bring their own.)
orig_ld_library_path=${LD_LIBRARY_PATH:-}
LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  if [ -d "$d" ]; then
    LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
export LD_LIBRARY_PATH
export VGPU_TEST_BACKEND=cuda
# Test executables and vgpu-bench start this vgpud, not one from the build machine's paths.
export VGPUD="$here/bin/vgpud" VGPU_VGPUD="$here/bin/vgpud"
# The conformance suite's PTX files (its build tree is not here).
export VGPU_PTX_DIR="$here/ptx"
export RUST_LOG=${RUST_LOG:-info}

# Short paths: UNIX socket paths are limited to 107 bytes.
work=$(mktemp -d /tmp/vgpu-gc.XXXXXX) || exit 2
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

names=()
verdicts=()
secs=()
notes=()
record() { # name verdict seconds note
  names+=("$1"); verdicts+=("$2"); secs+=("$3"); notes+=("$4")
  printf 'gpu-check: %-12s %-8s %5ss  %s\n' "$1" "$2" "$3" "$4"
}
wanted() {
  [ -z "$only" ] && return 0
  case ",$only," in *",$1,"*) return 0 ;; esac
  return 1
}
json_str() { # a JSON string literal
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/ }; s=${s//$'\r'/}
  printf '"%s"' "$s"
}

# ---- env: what machine this is ------------------------------------------------------------
stage_env() {
  local log="$out/env.log" t0=$SECONDS ok=PASS note
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm)"
    [ -r /etc/os-release ] && (. /etc/os-release && echo "os: $PRETTY_NAME")
    echo "glibc: $(ldd --version 2>/dev/null | head -n1)"
    echo "cpus: $(nproc)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "shmem THP: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)"
    echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
    cat "$here/MANIFEST" 2>/dev/null
    echo "--- nvidia-smi"
    nvidia-smi 2>&1
  } >"$log" 2>&1
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    note=$(nvidia-smi -L 2>/dev/null | head -n1)
  else
    ok=FAIL
    note="nvidia-smi does not work: no GPU visible"
  fi
  record env "$ok" $((SECONDS - t0)) "$note"
}

# ---- conformance: the test executables built on the build machine --------------------------
stage_conformance() {
  local t0=$SECONDS n=0 t name log rc note
  if [ -s "$here/tests/MISSING" ]; then
    record conformance FAIL 0 "missing from this folder: $(tr '\n' ' ' <"$here/tests/MISSING")"
  fi
  for t in "$here"/tests/*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    name=$(basename "$t")
    log="$out/test-$name.log"
    n=$((n + 1))
    t0=$SECONDS
    (cd "$work" && "$t" --test-threads=1) >"$log" 2>&1
    rc=$?
    note=$(grep -E '^test result:' "$log" | tail -n1)
    [ -n "$note" ] || note="no test summary (exit $rc); see $(basename "$log")"
    if [ $rc = 0 ]; then
      record "test:$name" PASS $((SECONDS - t0)) "$note"
    else
      record "test:$name" FAIL $((SECONDS - t0)) "$note"
    fi
  done
  if [ $n = 0 ] && [ ! -s "$here/tests/MISSING" ]; then
    record conformance FAIL 0 "no test executables in $here/tests"
  fi
}

# ---- bench: vgpu vs native on this GPU --------------------------------------------------------
stage_bench() {
  local t0=$SECONDS log="$out/bench-gpu.log" rc note
  # shellcheck disable=SC2086 # VGPU_BENCH_ARGS is a list of words
  "$here/bin/vgpu-bench" gpu --json "$out/bench-gpu.json" ${VGPU_BENCH_ARGS:-} >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    note="$(grep -c 'NOT MET' "$log") goal(s) not met; table in $(basename "$log")"
    record bench PASS $((SECONDS - t0)) "$note"
  else
    note=$(tail -n 3 "$log" | tr '\n' ' ')
    record bench FAIL $((SECONDS - t0)) "exit $rc: $note"
  fi
}

# The host's nvcc ($VGPU_NVCC, else on PATH or CUDA's default place).
find_nvcc() {
  local n
  n=${VGPU_NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  [ -x "$n" ] && echo "$n"
}

# Starts a vgpud (cuda backend unless BACKEND says otherwise) with one VM whose socket is
# DIR/vm.sock and a folder DIR/lib holding vgpu's libcuda.so.1; its log goes to LOG. The
# caller reads its pid from $!.
start_cuda_vgpud() { # DIR LOG [MEDIATOR-LINE [BACKEND]]
  local dir=$1 i
  mkdir -p "$dir/lib"
  ln -sf "$here/lib/libvgpucuda.so" "$dir/lib/libcuda.so.1"
  ln -sf "$here/lib/libvgpucuda.so" "$dir/lib/libcuda.so"
  rm -f "$dir/vm.sock"
  cat >"$dir/vgpud.toml" <<EOF
[mediator]
backend = "${4:-cuda}"
${3:-}

[[vm]]
name = "cuda-programs"
socket = "$dir/vm.sock"
vm_id = 1
pool = 0
shm_size = "256MiB"
mem_quota = "16GiB"
EOF
  "$here/bin/vgpud" --config "$dir/vgpud.toml" >"$2" 2>&1 &
  pids+=("$!")
  for i in $(seq 300); do
    [ -S "$dir/vm.sock" ] && break
    sleep 0.1
  done
}

# ---- cuda: CUDA C++ programs through vgpu's libcuda.so.1, next to NVIDIA's driver -----------
# Every program of cuda/ (kernel-free, as CI runs them) and cuda-gpu/ (with kernels) is built
# here with the host's nvcc (runtime static and shared) and run twice: on NVIDIA's driver and
# through vgpu's libcuda.so.1 attached to a vgpud (cuda backend) by VGPU_SOCKET. Both runs must
# print PASS, and their `result:` lines must be identical.
stage_cuda() {
  local t0=$SECONDS log="$out/cuda.log" dir="$work/cuda" nvcc src stem v flags extra exe rcn rcv
  local n=0 bad=0 failed="" i vpid
  nvcc=$(find_nvcc) || {
    record cuda FAIL 0 "no nvcc on this host"
    return
  }
  start_cuda_vgpud "$dir" "$out/cuda-vgpud.log"
  vpid=$!
  : >"$log"
  # Kernel sources (*.cuh) that driver-API programs load at run time, as a cubin and as PTX,
  # from $VGPU_TEST_KERNEL_DIR.
  for src in "$here"/cuda-gpu/*.cuh; do
    [ -f "$src" ] || continue
    stem=$(basename "$src" .cuh)
    "$nvcc" -arch=sm_90 -cubin -x cu -o "$dir/$stem.cubin" "$src" >>"$log" 2>&1
    "$nvcc" -arch=sm_90 -ptx -x cu -o "$dir/$stem.ptx" "$src" >>"$log" 2>&1
  done
  export VGPU_TEST_KERNEL_DIR="$dir"
  for src in "$here"/cuda/*.cu "$here"/cuda-gpu/*.cu; do
    [ -f "$src" ] || continue
    stem=$(basename "$src" .cu)
    # A program names the libraries it links in a first-lines comment `// nvcc-flags: ...`.
    extra=$(sed -n 's|^// nvcc-flags: ||p' "$src" | head -n 1)
    for v in static shared; do
      flags="$extra"
      [ "$v" = shared ] && flags="$flags -cudart shared"
      exe="$dir/$stem-$v"
      n=$((n + 1))
      # shellcheck disable=SC2086 # flags is a list of words
      if ! "$nvcc" -arch=sm_90 -I"$here/cuda-common" -o "$exe" "$src" $flags >>"$log" 2>&1; then
        bad=$((bad + 1)); failed="$failed $stem-$v(nvcc)"; continue
      fi
      timeout -k 5 300 "$exe" >"$exe.native" 2>&1
      rcn=$?
      LD_LIBRARY_PATH="$dir/lib:$LD_LIBRARY_PATH" VGPU_SOCKET="$dir/vm.sock" timeout -k 5 300 "$exe" >"$exe.vgpu" 2>&1
      rcv=$?
      {
        echo "=== $stem ($v): native exit $rcn, vgpu exit $rcv"
        echo "--- native"; cat "$exe.native"
        echo "--- vgpu"; cat "$exe.vgpu"
      } >>"$log"
      if [ $rcn != 0 ] || [ $rcv != 0 ] || ! grep -qx PASS "$exe.vgpu" ||
        ! diff <(grep '^result' "$exe.native") <(grep '^result' "$exe.vgpu") >>"$log"; then
        bad=$((bad + 1)); failed="$failed $stem-$v"
        # What the program asked of the driver before it failed: the run again, traced.
        echo "--- vgpu, VGPU_CUDA_LOG=trace (the last 80 driver calls and lines)" >>"$log"
        LD_LIBRARY_PATH="$dir/lib:$LD_LIBRARY_PATH" VGPU_SOCKET="$dir/vm.sock" VGPU_CUDA_LOG=trace \
          timeout -k 5 300 "$exe" 2>&1 | grep -v -e cuGetProcAddress -e cuDeviceGetAttribute \
          -e cuCtxGetCurrent -e cuCtxGetDevice -e CONTEXT_LOCAL_STORAGE | tail -n 80 >>"$log"
      fi
    done
  done
  kill -TERM "$vpid" 2>/dev/null
  wait "$vpid" 2>/dev/null
  if [ $bad = 0 ] && [ $n -gt 0 ]; then
    record cuda PASS $((SECONDS - t0)) "$n program builds identical to native; $(basename "$log")"
  else
    record cuda FAIL $((SECONDS - t0)) "$bad of $n failed:$failed; see $(basename "$log")"
  fi
}

# ---- cuda-bench: the CUDA runtime's costs, native vs through vgpu, one binary ---------------
# cuda-bench/cudabench.cu, built here, runs on NVIDIA's driver and then through vgpu's
# libcuda.so.1; the table (cuda-bench.log) and cuda-bench.json give both and the ratio
# vgpu / native of each metric's median.
# Medians over runs of each side, p50 and p99 separately, of the `metric NAME P50 P99 UNIT`
# lines of FILES (a file named native-* is a native run, any other a vgpu one): a table on
# stdout and JSON in JSON_OUT, ratio = vgpu / native (p50).
bench_medians() { # JSON_OUT TITLE FILES...
  local json=$1 title=$2
  shift 2
  awk -v json="$json" -v title="$title" '
    function median(list,   n, a, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    FNR == 1 { side = (FILENAME ~ /native-/) ? "n" : "v"; if (side == "n") nn++; else nv++ }
    $1 == "metric" {
      if (!($2 in unit)) { unit[$2] = $5; order[++k] = $2 }
      p50[side, $2] = p50[side, $2] " " $3; p99[side, $2] = p99[side, $2] " " $4
    }
    END {
      print "--- " title " (median of " nn " native and " nv " vgpu runs)"
      printf "%-34s %12s %12s %12s %12s %8s\n", "metric (p50; p99)", "native", "", "vgpu", "", "ratio"
      printf "{\"vgpud\": \"%s\", \"native_runs\": %d, \"vgpu_runs\": %d, \"metrics\": [", title, nn, nv > json
      for (i = 1; i <= k; i++) {
        m = order[i]
        n50 = median(p50["n", m]); n99 = median(p99["n", m]); v50 = median(p50["v", m]); v99 = median(p99["v", m])
        r = (n50 > 0) ? v50 / n50 : 0
        printf "%-34s %12.3f %12.3f %12.3f %12.3f %8.3f %s\n", m, n50, n99, v50, v99, r, unit[m]
        printf "%s{\"name\": \"%s\", \"unit\": \"%s\", \"native_p50\": %s, \"native_p99\": %s, \"vgpu_p50\": %s, \"vgpu_p99\": %s, \"ratio\": %.4f, \"native_runs_p50\": \"%s\", \"vgpu_runs_p50\": \"%s\"}", (i > 1 ? ", " : ""), m, unit[m], n50, n99, v50, v99, r, substr(p50["n", m], 2), substr(p50["v", m], 2) > json
      }
      printf "]}\n" > json
    }' "$@"
}

stage_cuda-bench() {
  local t0=$SECONDS log="$out/cuda-bench.log" dir="$work/cuda-bench" nvcc exe vpid
  nvcc=$(find_nvcc) || {
    record cuda-bench FAIL 0 "no nvcc on this host"
    return
  }
  exe="$dir/cudabench"
  mkdir -p "$dir"
  # shellcheck disable=SC2046 # the flags line is a list of words
  if ! "$nvcc" -arch=sm_90 -O2 -I"$here/cuda-common" -o "$exe" "$here/cuda-bench/cudabench.cu" \
    $(sed -n 's|^// nvcc-flags: ||p' "$here/cuda-bench/cudabench.cu" | head -n 1) >"$log" 2>&1; then
    record cuda-bench FAIL $((SECONDS - t0)) "nvcc failed; see $(basename "$log")"
    return
  fi
  # Native and vgpu alternate, three runs each, for vgpud's defaults (each VM's context in its
  # own worker process, device work waited for by blocking): the launch-bound figures move by
  # 10-30 % between runs a minute apart on this host, so the table gives each side's median.
  # Then one run each with every context inside vgpud (fault_isolation = "none": what the worker
  # process costs), with spinning on device work (device_wait = "spin": what blocking costs) and
  # with the guest library not using fences (VGPU_FENCES=0: what they gain), against the same
  # native median.
  local variant line json failed="" r runs bad
  for r in 1 2 3; do
    "$exe" >"$dir/native-$r.txt" 2>&1
    if ! grep -qx PASS "$dir/native-$r.txt"; then
      { echo "--- native (run $r)"; cat "$dir/native-$r.txt"; } >>"$log"
      record cuda-bench FAIL $((SECONDS - t0)) "the native run failed; see $(basename "$log")"
      return
    fi
    start_cuda_vgpud "$dir" "$out/cuda-bench-vgpud-default.log" ""
    vpid=$!
    LD_LIBRARY_PATH="$dir/lib:$LD_LIBRARY_PATH" VGPU_SOCKET="$dir/vm.sock" "$exe" >"$dir/vgpu-default-$r.txt" 2>&1
    kill -TERM "$vpid" 2>/dev/null
    wait "$vpid" 2>/dev/null
  done
  local fences
  for variant in none spin nofence; do
    fences=1 line=""
    case $variant in
      none) line='fault_isolation = "none"' ;;
      spin) line='device_wait = "spin"' ;;
      nofence) fences=0 ;;
    esac
    start_cuda_vgpud "$dir" "$out/cuda-bench-vgpud-$variant.log" "$line"
    vpid=$!
    VGPU_FENCES=$fences LD_LIBRARY_PATH="$dir/lib:$LD_LIBRARY_PATH" VGPU_SOCKET="$dir/vm.sock" \
      "$exe" >"$dir/vgpu-$variant-1.txt" 2>&1
    kill -TERM "$vpid" 2>/dev/null
    wait "$vpid" 2>/dev/null
  done
  for variant in default none spin nofence; do
    case $variant in
      default) line=""; json="$out/cuda-bench.json" ;;
      none) line='fault_isolation = "none"'; json="$out/cuda-bench-none.json" ;;
      spin) line='device_wait = "spin"'; json="$out/cuda-bench-spin.json" ;;
      nofence) line="defaults, the guest with VGPU_FENCES=0"; json="$out/cuda-bench-nofence.json" ;;
    esac
    runs=$(ls "$dir"/vgpu-"$variant"-*.txt)
    # Runs that did not print PASS.
    # shellcheck disable=SC2086 # a list of files
    bad=$(grep -Lx PASS $runs)
    if [ -n "$bad" ]; then
      for f in $bad; do { echo "--- vgpu ($variant, $(basename "$f"))"; cat "$f"; } >>"$log"; done
      failed="$failed $variant"
      continue
    fi
    # shellcheck disable=SC2086 # a list of files
    bench_medians "$json" "vgpud ${line:-defaults}" "$dir"/native-*.txt $runs >>"$log"
  done
  echo "ratio = vgpu / native (p50); latencies (us): lower is better, rates: higher" >>"$log"
  # The guest's last step of a pageable device-to-host copy on this host's CPU: plain copies
  # out of staging vs the streaming stores vgpu's libcuda uses from 8 MiB on (no GPU involved).
  "$here/bin/vgpu-bench" copy-out --json "$out/copy-out.json" >>"$log" 2>&1 ||
    echo "vgpu-bench copy-out failed" >>"$log"
  if [ -n "$failed" ]; then
    record cuda-bench FAIL $((SECONDS - t0)) "vgpu run(s) failed:$failed; see $(basename "$log")"
    return
  fi
  record cuda-bench PASS $((SECONDS - t0)) "tables in $(basename "$log"); cuda-bench.json (defaults), cuda-bench-none.json, cuda-bench-spin.json, cuda-bench-nofence.json"
}

# ---- frameworks: PyTorch, CuPy, numba-cuda, JAX and cuda-bindings through vgpu (issue 15) -----
# Each frameworks/check_NAME.py whose module (its `# framework-module:` line) imports with
# $VGPU_PYTHON runs on NVIDIA's driver and then through vgpu's libcuda.so.1, attached to a
# fresh vgpud (cuda backend) the way the cuda stage runs its programs: VGPU_SOCKET, vgpu's
# folder first on LD_LIBRARY_PATH. Both runs must exit 0 printing PASS, and their `result:`
# lines must be identical (each script states its rounding). A module that does not import is
# SKIPPED; each run has VGPU_FW_TIMEOUT seconds. A failing or differing script runs once more
# through vgpu with VGPU_CUDA_LOG=trace: frameworks-NAME.trace.log.gz keeps it all,
# frameworks.log its tail and the functions that answered an error. Then `startup.py` times
# import + first kernel of each framework, native and through vgpu (twice each).
fw_now() { date +%s.%N; }
fw_secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# The driver's library path without the toolkit folders prepended above (the frameworks bring
# their own CUDA libraries), plus the container's driver folder where there is one.
fw_native_ld() {
  local p=$orig_ld_library_path
  [ -d /usr/local/nvidia/lib64 ] && p="${p:+$p:}/usr/local/nvidia/lib64"
  echo "$p"
}
# Runs python SCRIPT ARGS... natively (MODE native) or through vgpu (MODE vgpu, DIR/lib and
# DIR/vm.sock from start_cuda_vgpud), output in OUTFILE, at most $fw_limit seconds; returns
# the script's status (124 or 137: killed at the limit).
fw_run() { # MODE DIR OUTFILE SCRIPT [ARGS...]
  local mode=$1 dir=$2 o=$3 ld
  shift 3
  ld=$(fw_native_ld)
  if [ "$mode" = vgpu ]; then
    LD_LIBRARY_PATH="$dir/lib${ld:+:$ld}" VGPU_SOCKET="$dir/vm.sock" \
      timeout -k 10 "${fw_limit:-240}" "${VGPU_PYTHON:-python3}" -u -B "$@" >"$o" 2>&1
  else
    LD_LIBRARY_PATH="$ld" timeout -k 10 "${fw_limit:-240}" \
      "${VGPU_PYTHON:-python3}" -u -B "$@" >"$o" 2>&1
  fi
}
# What a vgpu run's driver answered with an error, one line per function and error, counted.
fw_errors() { # FILE
  sed -n -e 's/^vgpu libcuda: \([A-Za-z0-9_]*\) is not supported.*/\1 -> CUDA_ERROR_NOT_SUPPORTED (first call)/p' \
    -e 's/^vgpu libcuda: \(export table [^ ]*\) is not supported.*/\1 -> CUDA_ERROR_NOT_SUPPORTED (first call)/p' \
    -e 's/^vgpu libcuda: \([A-Za-z0-9_]*\) -> \(CUDA_ERROR_[A-Z_0-9]*\).*/\1 -> \2/p' "$1" |
    sort | uniq -c | sort -rn
}

stage_frameworks() {
  local t0=$SECONDS log="$out/frameworks.log" dir="$work/frameworks" py=${VGPU_PYTHON:-python3}
  local backend=${VGPU_FW_BACKEND:-cuda} src name mod vpid rcn rcv ta tb tc td why subs only_vgpu
  local ran=0 startup=() modes="native vgpu" fw_limit=${VGPU_FW_TIMEOUT:-240}
  mkdir -p "$dir"
  : >"$log"
  if [ "$backend" != cuda ]; then
    # A dry run of this stage on a machine without a GPU: the kernel-free sub-tests only,
    # through vgpu only.
    export VGPU_FW_KERNELS=0
    modes=vgpu
  fi
  if ! command -v "$py" >/dev/null 2>&1; then
    record frameworks FAIL 0 "no $py here (VGPU_PYTHON names the Python with the frameworks)"
    return
  fi
  for src in "$here"/frameworks/check_*.py; do
    [ -f "$src" ] || continue
    name=$(basename "$src" .py)
    name=${name#check_}
    if [ -n "${VGPU_FW_ONLY:-}" ]; then
      case ",$VGPU_FW_ONLY," in *",$name,"*) ;; *) continue ;; esac
    fi
    mod=$(sed -n 's/^# framework-module: //p' "$src" | head -n 1)
    ta=$SECONDS
    if ! LD_LIBRARY_PATH=$(fw_native_ld) timeout -k 10 300 "$py" -c "import $mod" >"$dir/$name.import" 2>&1; then
      echo "=== $name: SKIPPED, python module $mod does not import: $(tail -n 1 "$dir/$name.import")" >>"$log"
      record "fw:$name" SKIP 0 "SKIPPED: $py cannot import $mod ($(tail -n 1 "$dir/$name.import" | cut -c1-120))"
      continue
    fi
    ran=$((ran + 1))
    start_cuda_vgpud "$dir" "$out/frameworks-$name-vgpud.log" "" "$backend"
    vpid=$!
    if [ ! -S "$dir/vm.sock" ]; then
      record "fw:$name" FAIL $((SECONDS - ta)) "vgpud did not listen: $(tail -n 2 "$out/frameworks-$name-vgpud.log" | tr '\n' ' ')"
      kill -TERM "$vpid" 2>/dev/null; wait "$vpid" 2>/dev/null
      continue
    fi
    tb=$(fw_now)
    [ "$backend" = cuda ] && fw_run native "$dir" "$dir/$name.native" "$src"
    rcn=$?
    tc=$(fw_now)
    fw_run vgpu "$dir" "$dir/$name.vgpu" "$src"
    rcv=$?
    td=$(fw_now)
    if [ "$backend" != cuda ]; then
      # No native run to compare with: the vgpu run stands in for it.
      cp "$dir/$name.vgpu" "$dir/$name.native"
      rcn=$rcv
    fi
    {
      echo "=== $name: native exit $rcn ($(fw_secs "$tb" "$tc") s), vgpu exit $rcv ($(fw_secs "$tc" "$td") s)"
      echo "--- native"; cat "$dir/$name.native"
      echo "--- vgpu"; cat "$dir/$name.vgpu"
      echo "--- result lines, native vs vgpu"
    } >>"$log"
    why=""
    [ $rcn = 124 ] || [ $rcn = 137 ] && why="$why native timed out ($fw_limit s);"
    [ $rcv = 124 ] || [ $rcv = 137 ] && why="$why vgpu timed out ($fw_limit s);"
    grep -qx PASS "$dir/$name.native" || why="$why native FAIL (exit $rcn): $(grep '^FAIL ' "$dir/$name.native" | cut -d: -f1 | sed 's/^FAIL //' | tr '\n' ' ');"
    grep -qx PASS "$dir/$name.vgpu" || why="$why vgpu FAIL (exit $rcv);"
    if ! diff <(grep '^result:' "$dir/$name.native") <(grep '^result:' "$dir/$name.vgpu") >>"$log"; then
      why="$why result lines differ;"
    else
      echo "(identical: $(grep -c '^result:' "$dir/$name.vgpu") lines)" >>"$log"
    fi
    # Sub-tests: how many passed each way, and which failed only through vgpu.
    subs="native $(grep -c '^PASS ' "$dir/$name.native")/$(grep -cE '^(PASS|FAIL) ' "$dir/$name.native"), vgpu $(grep -c '^PASS ' "$dir/$name.vgpu")/$(grep -cE '^(PASS|FAIL) ' "$dir/$name.vgpu") sub-tests pass"
    only_vgpu=$(comm -13 <(sed -n 's/^FAIL \([^:]*\).*/\1/p' "$dir/$name.native" | sort) \
      <(sed -n 's/^FAIL \([^:]*\).*/\1/p' "$dir/$name.vgpu" | sort) | tr '\n' ' ')
    [ -n "$only_vgpu" ] && subs="$subs; failing through vgpu only: $only_vgpu"
    {
      echo "--- $name: $subs"
      echo "--- vgpu run: functions that answered an error (count, function -> error)"
      fw_errors "$dir/$name.vgpu"
    } >>"$log"
    if [ -n "$why" ]; then
      local trace="$out/frameworks-$name.trace.log"
      fw_limit=${VGPU_FW_TRACE_TIMEOUT:-120} VGPU_CUDA_LOG=trace fw_run vgpu "$dir" "$trace" "$src"
      {
        echo "--- $name, through vgpu with VGPU_CUDA_LOG=trace: functions that answered an error"
        fw_errors "$trace"
        echo "--- the last 20 driver calls before each failed sub-test, then the trace's last 60 lines (both without the per-call queries); all of it in $(basename "$trace").gz"
        grep -v -e 'cuGetProcAddress' -e 'cuDeviceGetAttribute ->' -e 'cuCtxGetCurrent ->' \
          -e 'cuCtxGetDevice ->' -e 'cuCtxGetDevice_v2 ->' -e 'cuDevicePrimaryCtxGetState ->' \
          -e 'cuCtxSetCurrent ->' -e 'CONTEXT_LOCAL_STORAGE' "$trace" >"$dir/$name.trace.short"
        awk '/^vgpu libcuda: / { buf[n++ % 20] = $0; next }
          /^FAIL / { print "... " $0; for (i = (n > 20 ? n - 20 : 0); i < n; i++) print "    " buf[i % 20]; n = 0 }' \
          "$dir/$name.trace.short"
        echo "..."
        tail -n 60 "$dir/$name.trace.short"
      } >>"$log"
      gzip -f "$trace"
    fi
    kill -TERM "$vpid" 2>/dev/null
    wait "$vpid" 2>/dev/null
    local times="native $(fw_secs "$tb" "$tc") s, vgpu $(fw_secs "$tc" "$td") s"
    why=${why# }
    if [ "$backend" != cuda ]; then
      record "fw:$name" FAIL $((SECONDS - ta)) "NOT ON THE GPU (VGPU_FW_BACKEND=$backend, no kernels, no native run): vgpu ${why:-PASS}; $subs; $times"
    elif [ -z "$why" ]; then
      record "fw:$name" PASS $((SECONDS - ta)) "$subs, $(grep -c '^result:' "$dir/$name.vgpu") result lines identical; $times"
    else
      record "fw:$name" FAIL $((SECONDS - ta)) "$why $subs; $times; see $(basename "$log")"
    fi
    startup+=("$name")
  done
  if [ $ran = 0 ]; then
    record frameworks SKIP $((SECONDS - t0)) "SKIPPED: $py imports none of the frameworks"
    return
  fi
  # Start-up: import + first kernel, native and through vgpu, twice each (the first run may
  # pay for cold file caches).
  local line snotes="" bad="" i m
  ta=$SECONDS
  echo "=== start-up (import + first kernel, seconds)" >>"$log"
  start_cuda_vgpud "$dir" "$out/frameworks-startup-vgpud.log" "" "$backend"
  vpid=$!
  for name in "${startup[@]}"; do
    line="$name:"
    for m in $modes; do
      for i in 1 2; do
        tb=$(fw_now)
        if fw_run "$m" "$dir" "$dir/startup-$name-$m-$i" "$here/frameworks/startup.py" "$name"; then
          line="$line $m $(sed -n 's/^startup: [^ ]* //p' "$dir/startup-$name-$m-$i" | tail -n 1) (wall $(fw_secs "$tb" "$(fw_now)"));"
        else
          line="$line $m run $i FAILED: $(tail -n 1 "$dir/startup-$name-$m-$i");"
          bad="$bad $name/$m"
        fi
      done
    done
    echo "$line" >>"$log"
    snotes="$snotes $name:"
    for m in $modes; do
      snotes="$snotes $m $(sed -n 's/^startup: .* total=//p' "$dir/startup-$name-$m-2" 2>/dev/null) s"
    done
    snotes="$snotes;"
  done
  kill -TERM "$vpid" 2>/dev/null
  wait "$vpid" 2>/dev/null
  if [ "$backend" != cuda ]; then
    record fw:startup FAIL $((SECONDS - ta)) "NOT ON THE GPU (VGPU_FW_BACKEND=$backend, no kernels):$snotes${bad:+ failed:$bad}"
  elif [ -z "$bad" ]; then
    record fw:startup PASS $((SECONDS - ta)) "import + first kernel (second run):$snotes details in $(basename "$log")"
  else
    record fw:startup FAIL $((SECONDS - ta)) "failed:$bad;$snotes see $(basename "$log")"
  fi
}

# ---- fw-bench: PyTorch models, native vs through vgpu (issue 15) --------------------------
# frameworks/bench_torch.py (ResNet-50 bf16 inference, GPT-2 greedy decoding, a ResNet-50
# training step) runs on NVIDIA's driver and through vgpu's libcuda.so.1, alternating,
# VGPU_FW_BENCH_RUNS times each (default 3; a fresh vgpud for each vgpu run); fw-bench.log has
# the table of medians, fw-bench.json the figures and ratios (vgpu / native, rates: higher is
# better). GPT-2's greedy tokens must be the same both ways.
stage_fw-bench() {
  local t0=$SECONDS log="$out/fw-bench.log" dir="$work/fw-bench" py=${VGPU_PYTHON:-python3}
  local r vpid bad="" fw_limit=${VGPU_FW_BENCH_TIMEOUT:-600} ratios
  mkdir -p "$dir"
  rm -f "$dir"/native-*.txt "$dir"/vgpu-*.txt
  : >"$log"
  if ! LD_LIBRARY_PATH=$(fw_native_ld) timeout -k 10 300 "$py" -c "import torch, torchvision, transformers" >"$dir/import" 2>&1; then
    record fw-bench SKIP $((SECONDS - t0)) "SKIPPED: $py cannot import torch, torchvision and transformers ($(tail -n 1 "$dir/import" | cut -c1-120))"
    return
  fi
  for r in $(seq 1 "${VGPU_FW_BENCH_RUNS:-3}"); do
    fw_run native "$dir" "$dir/native-$r.txt" "$here/frameworks/bench_torch.py"
    start_cuda_vgpud "$dir" "$out/fw-bench-vgpud-$r.log" ""
    vpid=$!
    fw_run vgpu "$dir" "$dir/vgpu-$r.txt" "$here/frameworks/bench_torch.py"
    kill -TERM "$vpid" 2>/dev/null
    wait "$vpid" 2>/dev/null
  done
  for f in "$dir"/native-*.txt "$dir"/vgpu-*.txt; do
    { echo "--- $(basename "$f")"; cat "$f"; } >>"$log"
    grep -qx PASS "$f" || bad="$bad $(basename "$f" .txt)"
    if ! diff <(grep '^result:' "$dir/native-1.txt") <(grep '^result:' "$f") >/dev/null; then
      bad="$bad $(basename "$f" .txt):results-differ"
    fi
  done
  # shellcheck disable=SC2086 # lists of files
  bench_medians "$out/fw-bench.json" "PyTorch models (bench_torch.py)" \
    "$dir"/native-*.txt "$dir"/vgpu-*.txt >>"$log"
  echo "ratio = vgpu / native (p50 rates: higher is better)" >>"$log"
  ratios=$(awk '$1 ~ /_/ && NF >= 7 { printf "%s %s; ", $1, $6 }' "$log")
  if [ -n "$bad" ]; then
    record fw-bench FAIL $((SECONDS - t0)) "failed:$bad; $ratios see $(basename "$log")"
  else
    record fw-bench PASS $((SECONDS - t0)) "ratios (vgpu / native, p50): $ratios fw-bench.json"
  fi
}

# ---- tenants: two PyTorch processes in two VMs share one GPU (frameworks issue) ---------------
# One vgpud (cuda backend, kernel accounting on, device depth 2, no starvation guard) serves
# VMs tenant-a (pool "heavy", weight 3) and tenant-b (pool "light", weight 1), both on GPU 0.
# frameworks/tenant_torch.py `load` (float32 matmuls of small integers, each product checked
# bit for bit against the exact one on the GPU, one synchronisation per round) runs in each,
# unmodified PyTorch on vgpu's libcuda.so.1. vgpud's per-VM device time (`vgpuctl stats`,
# device_ns) is read at the edges of each window: A alone (reported), A and B at equal priority
# (shares must be within ±VGPU_TENANTS_TOLERANCE, absolute, of 3:1), B raised to priority 2 at
# run time (`vgpuctl set`; B's share must be >= 1 - tolerance). Then B's load stops and
# `fault` runs in VM B while A goes on: B must get CUDA_ERROR_ILLEGAL_ADDRESS, A every product
# exact, before and after. The load and the fault also run alone on NVIDIA's driver first (the
# reference rate; not gated). frameworks/tenants_report.py gives the verdicts and tenants.json.
# SKIPPED when $VGPU_PYTHON cannot import torch.
tn_start() { # NAME SOCKET ARGS...: tenant_torch.py through vgpu in the background; pid in tn_pid
  local name=$1 sock=$2 ld
  shift 2
  ld=$(fw_native_ld)
  LD_LIBRARY_PATH="$tn_dir/lib${ld:+:$ld}" VGPU_SOCKET="$sock" \
    timeout -k 10 "$tn_limit" "${VGPU_PYTHON:-python3}" -u -B "$here/frameworks/tenant_torch.py" \
    "$@" >"$tn_dir/$name.txt" 2>&1 &
  tn_pid=$!
  pids+=("$tn_pid")
}
tn_wait_line() { # NAME PID REGEX SECONDS: until NAME's output has a line matching REGEX
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    grep -qE "$3" "$tn_dir/$1.txt" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { grep -qE "$3" "$tn_dir/$1.txt" 2>/dev/null; return; }
    sleep 0.1
  done
  return 1
}
tn_reap() { # NAME PID SECONDS: waits for the process to end (killed after SECONDS), status in rc-NAME
  local i rc
  for ((i = 0; i < $3 * 10; i++)); do
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$2" 2>/dev/null && kill -TERM "$2" 2>/dev/null
  wait "$2" 2>/dev/null
  rc=$?
  echo "$rc" >"$tn_dir/rc-$1"
  return $rc
}
tn_snap() { # NAME: vgpud's stats now, with the time, as snap-NAME.json
  local t s
  t=$(date +%s.%N)
  s=$("$here/bin/vgpuctl" --admin-socket "$tn_dir/admin.sock" stats 2>>"$tn_log") || s=null
  printf '{"t": %s, "stats": %s}\n' "$t" "${s:-null}" >"$tn_dir/snap-$1.json"
}
tn_fail() { # NOTE: the stage failed before its checks; outputs kept
  record tenants FAIL $((SECONDS - tn_t0)) "$1; see $(basename "$tn_log")"
}

stage_tenants() {
  local py=${VGPU_PYTHON:-python3} tol=${VGPU_TENANTS_TOLERANCE:-0.05}
  local win=${VGPU_TENANTS_WINDOW:-20} pwin=${VGPU_TENANTS_PRIORITY_WINDOW:-10}
  local alone=${VGPU_TENANTS_ALONE:-5} depth=${VGPU_TENANTS_DEPTH:-2} n=${VGPU_TENANTS_N:-4096}
  local start_to=${VGPU_TENANTS_START_TIMEOUT:-240} vpid pa pb pf f
  tn_t0=$SECONDS tn_dir="$out/tenants" tn_log="$out/tenants.log" tn_limit=1200
  mkdir -p "$tn_dir/lib"
  : >"$tn_log"
  if ! LD_LIBRARY_PATH=$(fw_native_ld) timeout -k 10 300 "$py" -c "import torch" >"$tn_dir/import.txt" 2>&1; then
    record tenants SKIP 0 "SKIPPED: $py cannot import torch ($(tail -n 1 "$tn_dir/import.txt" | cut -c1-120))"
    return
  fi
  # A starved tenant's pending synchronisation gives up after vgpu_guest's 20 s completion
  # timeout (CUDA_ERROR_LAUNCH_TIMEOUT): the priority window must end well before that.
  if [ "$pwin" -gt 15 ]; then
    echo "VGPU_TENANTS_PRIORITY_WINDOW=$pwin is over 15 s: cut to 15 (the guest's 20 s wait)" >>"$tn_log"
    pwin=15
  fi

  # The reference: the load, then the fault, alone on NVIDIA's driver.
  echo "=== native: load ${VGPU_TENANTS_REF_SECONDS:-10} s, then fault" >>"$tn_log"
  fw_limit=600 fw_run native "$tn_dir" "$tn_dir/native.txt" "$here/frameworks/tenant_torch.py" \
    load --n "$n" --seconds "${VGPU_TENANTS_REF_SECONDS:-10}"
  echo $? >"$tn_dir/rc-native"
  fw_limit=300 fw_run native "$tn_dir" "$tn_dir/native-fault.txt" "$here/frameworks/tenant_torch.py" \
    fault --n "$n"
  echo $? >"$tn_dir/rc-native-fault"

  ln -sf "$here/lib/libvgpucuda.so" "$tn_dir/lib/libcuda.so.1"
  ln -sf "$here/lib/libvgpucuda.so" "$tn_dir/lib/libcuda.so"
  rm -f "$tn_dir"/*.sock "$tn_dir"/stop-*
  cat >"$tn_dir/vgpud.toml" <<EOF
# gpu-check stage tenants: two VMs in two pools on GPU 0.
[mediator]
backend = "${VGPU_TENANTS_BACKEND:-cuda}"
admin_socket = "$tn_dir/admin.sock"
# Kernels complete when retired and are charged their CUDA-event time: what the shares use.
cuda_kernel_accounting = true

[scheduler]
policy = "priority"
# Few kernels on the GPU at once, so that the scheduler, not the GPU's time slicing between
# contexts, decides whose work runs (docs/scheduling.md, "On the GPU").
device_depth = $depth
# No starvation guard: strict priority is what the priority window measures (with the guard a
# lower class's aged backlog goes first once every max_wait_ms).
max_wait_ms = 0

[[pool]]
id = 1
name = "heavy"
weight = 3
gpus = [0]

[[pool]]
id = 2
name = "light"
weight = 1
gpus = [0]

[[vm]]
name = "tenant-a"
socket = "$tn_dir/a.sock"
vm_id = 1
pool = 1
priority = 0
shm_size = "256MiB"
mem_quota = "16GiB"

[[vm]]
name = "tenant-b"
socket = "$tn_dir/b.sock"
vm_id = 2
pool = 2
priority = 0
shm_size = "256MiB"
mem_quota = "16GiB"
EOF
  "$here/bin/vgpud" --config "$tn_dir/vgpud.toml" >"$out/tenants-vgpud.log" 2>&1 &
  vpid=$!
  pids+=("$vpid")
  await_vgpud tenants "$vpid" "$tn_dir/b.sock" "$out/tenants-vgpud.log" "${VGPU_TENANTS_BACKEND:-cuda}" "$tn_t0" || return
  for ((f = 0; f < 300; f++)); do
    listening "$tn_dir/admin.sock" && break
    sleep 0.1
  done

  # A alone, then A and B.
  echo "=== A starts (through vgpu)" >>"$tn_log"
  tn_start a "$tn_dir/a.sock" load --n "$n" --seconds 3600 --stop-file "$tn_dir/stop-a"
  pa=$tn_pid
  if ! tn_wait_line a "$pa" '^steady:' "$start_to"; then
    tn_fail "tenant A did not start its loop within $start_to s: $(tail -n 2 "$tn_dir/a.txt" | tr '\n' ' ')"
    kill -TERM "$pa" "$vpid" 2>/dev/null; wait "$pa" "$vpid" 2>/dev/null
    return
  fi
  sleep 1
  tn_snap alone0
  sleep "$alone"
  tn_snap alone1
  echo "=== B starts (through vgpu)" >>"$tn_log"
  tn_start b "$tn_dir/b.sock" load --n "$n" --seconds 3600 --stop-file "$tn_dir/stop-b"
  pb=$tn_pid
  if ! tn_wait_line b "$pb" '^steady:' "$start_to"; then
    tn_fail "tenant B did not start its loop within $start_to s: $(tail -n 2 "$tn_dir/b.txt" | tr '\n' ' ')"
    kill -TERM "$pa" "$pb" "$vpid" 2>/dev/null; wait "$pa" "$pb" "$vpid" 2>/dev/null
    return
  fi
  sleep 2
  echo "=== weights window: $win s" >>"$tn_log"
  tn_snap w0
  sleep "$win"
  tn_snap w1
  echo "=== priority window: B at priority 2 for $pwin s" >>"$tn_log"
  "$here/bin/vgpuctl" --admin-socket "$tn_dir/admin.sock" set tenant-b priority 2 >>"$tn_log" 2>&1
  sleep 1
  tn_snap p0
  sleep "$pwin"
  tn_snap p1
  "$here/bin/vgpuctl" --admin-socket "$tn_dir/admin.sock" set tenant-b priority 0 >>"$tn_log" 2>&1

  # B's load ends; B faults while A goes on.
  touch "$tn_dir/stop-b"
  tn_reap b "$pb" 120
  echo "=== B's load ended (exit $(cat "$tn_dir/rc-b")); fault in VM B" >>"$tn_log"
  # The fault process stays connected a few seconds after its fault: vgpud's stats then show
  # VM B's broken context next to A's working one.
  tn_start fault "$tn_dir/b.sock" fault --n "$n" --hold 8
  pf=$tn_pid
  tn_wait_line fault "$pf" '^result: fault' 300
  sleep 3
  tn_snap fault
  tn_reap fault "$pf" 60
  echo "=== B's fault run ended (exit $(cat "$tn_dir/rc-fault")); A runs 3 s more" >>"$tn_log"
  sleep 3
  touch "$tn_dir/stop-a"
  tn_reap a "$pa" 120
  echo "=== A ended (exit $(cat "$tn_dir/rc-a"))" >>"$tn_log"
  tn_snap end
  kill -TERM "$vpid" 2>/dev/null
  wait "$vpid" 2>/dev/null

  for f in native native-fault a b fault; do
    { echo "--- $f.txt (exit $(cat "$tn_dir/rc-$f" 2>/dev/null))"; grep -v '^progress:' "$tn_dir/$f.txt"; } >>"$tn_log"
  done
  "$py" "$here/frameworks/tenants_report.py" "$tn_dir" --weights 3,1 --tolerance "$tol" \
    --json "$out/tenants.json" >"$tn_dir/report.txt" 2>&1
  cat "$tn_dir/report.txt" >>"$tn_log"
  if ! grep -q '^check ' "$tn_dir/report.txt"; then
    tn_fail "tenants_report.py failed: $(tail -n 2 "$tn_dir/report.txt" | tr '\n' ' ')"
    return
  fi
  local _c name verdict note
  while read -r _c name verdict note; do
    record "tenants:$name" "$verdict" $((SECONDS - tn_t0)) "$note"
  done < <(grep '^check ' "$tn_dir/report.txt")
}

# ---- sched: the scheduler benchmark (issue 5) on this GPU ------------------------------------
# Fails only when the benchmark cannot run; its goals are the cpu backend's (reported, not
# enforced here).
stage_sched() {
  local t0=$SECONDS log="$out/sched.log" rc note
  # shellcheck disable=SC2086 # VGPU_SCHED_ARGS is a list of words
  timeout -k 10 "${VGPU_SCHED_TIMEOUT:-300}" "$here/bin/vgpu-bench" sched --backend cuda \
    --json "$out/sched.json" ${VGPU_SCHED_ARGS:-} >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ] && [ -s "$out/sched.json" ]; then
    note="p99 us: alone $(json_num hp_p99_alone_us), priority $(json_num hp_p99_contended_us), fifo $(json_num hp_p99_fifo_us), reserve $(json_num hp_p99_reserved_us); share err $(json_num pool_share_max_err); $(grep -c 'NOT MET' "$log") cpu goal(s) not met"
    record sched PASS $((SECONDS - t0)) "$note"
  else
    note=$(tail -n 3 "$log" | tr '\n' ' ')
    record sched FAIL $((SECONDS - t0)) "exit $rc: $note"
  fi
}
json_num() { # a top-level number of sched.json, rounded
  sed -n "s/^ *\"$1\": *\([-0-9.eE+]*\).*/\1/p" "$out/sched.json" | head -n1 | xargs -r printf '%.4g'
}

# ---- vm: a QEMU (TCG) guest runs work through the vGPU on the GPU -----------------------------
listening() { # is a UNIX socket bound at $1 listening? (/proc/net/unix, no probe connection)
  local _num _ref _proto flags _type _st _inode path
  while read -r _num _ref _proto flags _type _st _inode path; do
    if [ "$path" = "$1" ] && [[ $flags =~ ^[0-9A-Fa-f]+$ ]] && (( (16#$flags & 0x10000) != 0 )); then
      return 0
    fi
  done </proc/net/unix
  return 1
}

# The QEMU bundle, unpacked once into $work/qemu (its wrapper is $work/qemu/qemu).
unpack_qemu() {
  [ -x "$work/qemu/qemu" ] && return 0
  mkdir -p "$work/qemu"
  tar -xzf "$here/qemu-bundle.tar.gz" -C "$work/qemu" --strip-components=1 2>"$out/qemu-unpack.log"
}

# Waits until vgpud (pid PID, log LOG) listens on SOCK; on failure records STAGE as failed
# and returns 1.
await_vgpud() { # STAGE PID SOCK LOG BACKEND T0
  local waited=0 rc
  until listening "$3"; do
    if ! kill -0 "$2" 2>/dev/null; then
      wait "$2"; rc=$?
      record "$1" FAIL $((SECONDS - $6)) "vgpud (backend $5) exited at start-up ($rc): $(tail -n 2 "$4" | tr '\n' ' ')"
      return 1
    fi
    if [ $waited -ge 600 ]; then
      record "$1" FAIL $((SECONDS - $6)) "vgpud socket not listening after 60 s"
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# Boots the guest kernel under TCG with INITRD and the vGPU on SOCK, kernel arguments ARGS
# appended, its serial console (without carriage returns) in SERIAL; returns QEMU's status
# (124 or 137: still running after TIMEOUT seconds). intel-iommu + intel_iommu=on: the guest
# waits on MSI-X through VFIO (the initramfs loads the modules), as in the demo;
# no_timer_check: with interrupt remapping a slow boot-time timer check panics the kernel (TCG
# on a loaded host).
boot_guest() { # INITRD ARGS MEM SOCK SERIAL TIMEOUT
  local rc
  timeout -k 5 "$6" "$work/qemu/qemu" -accel tcg -machine q35 -m "$3" -smp 1 \
    -device intel-iommu,intremap=on \
    -display none -monitor none -serial stdio -nic none -no-reboot \
    -kernel "$here/vm/vmlinuz" -initrd "$1" \
    -append "console=ttyS0 panic=-1 quiet intel_iommu=on no_timer_check $2" \
    -chardev "socket,id=vgpu0,path=$4" -device ivshmem-doorbell,chardev=vgpu0,vectors=1 \
    </dev/null >"$5" 2>&1
  rc=$?
  tr -d '\r' <"$5" >"$5.tmp" && mv "$5.tmp" "$5"
  return $rc
}

stage_vm() {
  local t0=$SECONDS log="$out/vm-vgpud.log" serial="$out/vm.serial.log" note rc=0
  local sock="$work/vm-a.sock" admin="$work/admin.sock"
  local args=${VGPU_GUEST_ARGS:-selftest} timeout=${VGPU_VM_TIMEOUT:-240}
  local backend=${VGPU_CHECK_BACKEND:-cuda}
  local fail=""
  if ! unpack_qemu; then
    record vm FAIL $((SECONDS - t0)) "cannot unpack qemu-bundle.tar.gz (see qemu-unpack.log)"
    return
  fi
  cat >"$work/vgpud.toml" <<EOF
[mediator]
backend = "$backend"
admin_socket = "$admin"

[[vm]]
name = "vm-a"
socket = "$sock"
vm_id = 1
pool_id = 0
priority = 2
mem_quota = "256MiB"
shm_size = "16MiB"
EOF
  "$here/bin/vgpud" --config "$work/vgpud.toml" >"$log" 2>&1 &
  local vgpud=$!
  pids+=("$vgpud")
  await_vgpud vm "$vgpud" "$sock" "$log" "$backend" "$t0" || return
  boot_guest "$here/vm/initramfs.cpio" "vgpu.args=$args" 256M "$sock" "$serial" "$timeout"
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    fail="VM still running after ${timeout} s (killed)"
  elif grep -q 'selftest: FAIL' "$serial"; then
    fail="guest $(grep -m1 'selftest: FAIL' "$serial")"
  elif ! grep -q 'selftest: PASS' "$serial"; then
    fail="no 'selftest: PASS' on the serial console (qemu exit $rc)"
  elif ! grep -q 'vgpu-guest: exit=0' "$serial"; then
    fail="guest program did not exit 0: $(grep -m1 'vgpu-guest: exit=' "$serial")"
  elif ! grep -q 'vgpu: vm_id=1 pool_id=0 priority=2 name=vm-a' "$serial"; then
    fail="guest saw other ids: $(grep -m1 'vgpu: vm_id=' "$serial")"
  fi
  # The host's view: the VM ran commands, on the cuda backend.
  "$here/bin/vgpuctl" --admin-socket "$admin" stats >"$out/vm-vgpuctl-stats.json" 2>>"$log"
  if [ -z "$fail" ]; then
    local stats
    stats=$(tr -d ' \n' <"$out/vm-vgpuctl-stats.json")
    if ! grep -q "\"backend\":\"$backend\"" <<<"$stats"; then
      fail="vgpuctl stats does not show backend $backend: $(head -c 200 <<<"$stats")"
    elif grep -qE '"commands":0[,}]' <<<"$stats"; then
      fail="vgpud counted no commands for the VM"
    fi
  fi
  kill -TERM "$vgpud" 2>/dev/null
  wait "$vgpud" 2>/dev/null
  if ! kill -0 "$vgpud" 2>/dev/null; then
    pids=()
  fi
  if [ -n "$fail" ]; then
    record vm FAIL $((SECONDS - t0)) "$fail"
  else
    note="$(grep -m1 'selftest: PASS' "$serial"), $(grep -m1 '^wait: ' "$serial") (backend $backend, guest args: $args, TCG)"
    if [ "$backend" != cuda ]; then
      record vm FAIL $((SECONDS - t0)) "NOT ON THE GPU (VGPU_CHECK_BACKEND=$backend): $note"
      return
    fi
    record vm PASS $((SECONDS - t0)) "$note"
  fi
}

# ---- cuda-vm: an nvcc-built program inside a VM (TCG) on vgpu's libcuda.so.1, on the GPU -----
# cuda-gpu/vecadd.cu is built here with the host's nvcc (runtime static and shared) and run on
# NVIDIA's driver. guest-image.sh then installs vgpu's libcuda.so.1 in the guest image as a
# distribution would (/usr/lib/x86_64-linux-gnu, a libcuda.so link, ld.so.conf and the
# ld.so.cache made by ldconfig), with both programs and the libraries ldd lists for them here,
# as a cpio archive appended to vm/initramfs.cpio. The guest runs them with no LD_LIBRARY_PATH
# and no VGPU_SOCKET (the driver finds the vGPU on PCI) against vgpud on the cuda backend:
# each must print PASS, and its `result:` lines must equal the native run's.
guest_output() { # SERIAL NAME: what the guest's program NAME printed
  awk -v s="vgpu-guest: running $2" -v e="vgpu-guest: $2 exit=" '
    index($0, e) == 1 { exit }
    on { print }
    $0 == s || index($0, s " ") == 1 { on = 1 }' "$1"
}

stage_cuda-vm() {
  local t0=$SECONDS log="$out/cuda-vm.log" serial="$out/cuda-vm.serial.log" dir="$work/cuda-vm"
  local src=${VGPU_CUDA_VM_PROGRAM:-$here/cuda-gpu/vecadd.cu} backend=${VGPU_CUDA_VM_BACKEND:-cuda}
  local timeout=${VGPU_VM_TIMEOUT:-240} sock="$work/cuda-vm.sock" admin="$work/cuda-vm-admin.sock"
  local nvcc stem v flags exe exes=() progs=() run="" name rc vgpud fail="" code lines=0
  nvcc=$(find_nvcc) || {
    record cuda-vm FAIL 0 "no nvcc on this host"
    return
  }
  mkdir -p "$dir"
  stem=$(basename "$src" .cu)
  : >"$log"
  for v in static shared; do
    flags=""
    [ "$v" = shared ] && flags="-cudart shared"
    exe="$dir/$stem-$v"
    # shellcheck disable=SC2086 # flags and VGPU_NVCC_FLAGS are lists of words
    if ! "$nvcc" -arch=sm_90 $flags ${VGPU_NVCC_FLAGS:-} -I"$here/cuda-common" -o "$exe" "$src" >>"$log" 2>&1; then
      record cuda-vm FAIL $((SECONDS - t0)) "nvcc $stem ($v) failed; see $(basename "$log")"
      return
    fi
    exes+=("$exe")
    progs+=("$stem-$v")
    run="$run${run:+,}/usr/bin/$stem-$v"
    if [ "$backend" = cuda ]; then
      "$exe" >"$exe.native" 2>&1
      rc=$?
      { echo "=== $stem-$v native: exit $rc"; cat "$exe.native"; } >>"$log"
      if [ $rc != 0 ] || ! grep -qx PASS "$exe.native" || ! grep -q '^result' "$exe.native"; then
        record cuda-vm FAIL $((SECONDS - t0)) "$stem-$v failed natively (exit $rc); see $(basename "$log")"
        return
      fi
    fi
  done
  # ldd resolves the programs' libraries with this script's LD_LIBRARY_PATH (the shared
  # runtime's libcudart.so.13 under /usr/local/cuda); libcuda.so.1 is always vgpu's.
  if ! bash "$here/guest-image.sh" --libcuda "$here/lib/libvgpucuda.so" --out "$dir/layer.cpio" \
    "${exes[@]}" >>"$log" 2>&1; then
    record cuda-vm FAIL $((SECONDS - t0)) "guest-image.sh failed: $(tail -n 2 "$log" | tr '\n' ' ')"
    return
  fi
  cat "$here/vm/initramfs.cpio" "$dir/layer.cpio" >"$dir/initramfs.cpio"
  if ! unpack_qemu; then
    record cuda-vm FAIL $((SECONDS - t0)) "cannot unpack qemu-bundle.tar.gz (see qemu-unpack.log)"
    return
  fi
  printf '%s\n' '[mediator]' "backend = \"$backend\"" "admin_socket = \"$admin\"" '' \
    '[[vm]]' 'name = "vm-a"' "socket = \"$sock\"" 'vm_id = 1' 'pool_id = 0' 'priority = 0' \
    'mem_quota = "2GiB"' 'shm_size = "64MiB"' >"$dir/vgpud.toml"
  "$here/bin/vgpud" --config "$dir/vgpud.toml" >"$out/cuda-vm-vgpud.log" 2>&1 &
  vgpud=$!
  pids+=("$vgpud")
  await_vgpud cuda-vm "$vgpud" "$sock" "$out/cuda-vm-vgpud.log" "$backend" "$t0" || return
  boot_guest "$dir/initramfs.cpio" "vgpu.run=$run" 512M "$sock" "$serial" "$timeout"
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    fail="VM still running after ${timeout} s (killed);"
  elif ! grep -qx 'vgpu-guest: ld.so.cache: libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1' "$serial"; then
    fail="the guest's ld.so.cache has no libcuda.so.1 in /usr/lib/x86_64-linux-gnu (qemu exit $rc);"
  else
    for name in "${progs[@]}"; do
      guest_output "$serial" "$name" >"$dir/$name.guest"
      code=$(sed -n "s/^vgpu-guest: $name exit=//p" "$serial" | head -n1)
      { echo "=== $name in the guest: exit ${code:-none}"; cat "$dir/$name.guest"; } >>"$log"
      if [ -z "$code" ]; then
        fail="$fail $name did not run to its end in the guest;"
      elif [ "$code" != 0 ] || ! grep -qx PASS "$dir/$name.guest"; then
        fail="$fail $name failed in the guest (exit $code) $(grep -m1 FAILED "$dir/$name.guest");"
      elif [ "$backend" = cuda ] &&
        ! diff <(grep '^result' "$dir/$name.native") <(grep '^result' "$dir/$name.guest") >>"$log"; then
        fail="$fail $name: result lines differ from the native run's;"
      else
        lines=$((lines + $(grep -c '^result' "$dir/$name.guest")))
      fi
    done
  fi
  # The host's view: the VM's commands ran on this backend.
  "$here/bin/vgpuctl" --admin-socket "$admin" stats >"$out/cuda-vm-vgpuctl-stats.json" 2>>"$log"
  if [ -z "$fail" ]; then
    local stats
    stats=$(tr -d ' \n' <"$out/cuda-vm-vgpuctl-stats.json")
    if ! grep -q "\"backend\":\"$backend\"" <<<"$stats"; then
      fail="vgpuctl stats does not show backend $backend: $(head -c 200 <<<"$stats");"
    elif grep -qE '"commands":0[,}]' <<<"$stats"; then
      fail="vgpud counted no commands for the VM;"
    fi
  fi
  kill -TERM "$vgpud" 2>/dev/null
  wait "$vgpud" 2>/dev/null
  if [ -n "$fail" ]; then
    record cuda-vm FAIL $((SECONDS - t0)) "$fail see $(basename "$log"), $(basename "$serial")"
  elif [ "$backend" != cuda ]; then
    record cuda-vm FAIL $((SECONDS - t0)) "NOT ON THE GPU (VGPU_CUDA_VM_BACKEND=$backend): ${progs[*]} passed in the guest, not compared with a native run"
  else
    local cache="ld.so.cache from the image"
    grep -q 'vgpu-guest: no ld.so.cache in the image' "$serial" &&
      cache="ld.so.cache made at boot: ldconfig -r failed here, see $(basename "$log")"
    record cuda-vm PASS $((SECONDS - t0)) "${progs[*]} in a TCG guest on the installed libcuda.so.1 ($cache; $(sed -n 's/^vgpu-guest: vGPU .*\(driver=.*\)/vGPU \1/p' "$serial" | head -n1)): PASS, $lines result line(s) identical to native"
  fi
}

# ---- breakdown: the same benchmark with every context inside vgpud ---------------------------
# What the worker processes (fault containment) cost. Reported, not gated.
stage_breakdown() {
  local t0=$SECONDS log="$out/bench-gpu-fast.log" rc
  # shellcheck disable=SC2086 # VGPU_BENCH_ARGS is a list of words
  "$here/bin/vgpu-bench" gpu --json "$out/bench-gpu-fast.json" \
    --mediator 'fault_isolation = "none"' \
    --max-copy $((64 << 20)) --sgemm-reps 5 ${VGPU_BENCH_ARGS:-} >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    record breakdown PASS $((SECONDS - t0)) "fault_isolation none (contexts inside vgpud); table in $(basename "$log")"
  else
    record breakdown FAIL $((SECONDS - t0)) "exit $rc: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
}

# ---- wait: what waiting on the GPU costs the host (issue 12) ---------------------------------
# vgpud + worker CPU while a VM waits on a 1 s kernel, sync round trip and async launch rate,
# `device_wait` spin vs block side by side; once with worker processes (the default), once
# with every context inside vgpud. Fails when the CPU goal (block < 5 % of a core) is not met.
stage_wait() {
  local t0=$SECONDS rc fail="" note="" iso log json
  for iso in process none; do
    log="$out/wait-$iso.log" json="$out/wait-$iso.json"
    # shellcheck disable=SC2086 # VGPU_WAIT_ARGS is a list of words
    timeout -k 10 300 "$here/bin/vgpu-bench" wait --stage host --backend cuda \
      --mediator "fault_isolation = \"$iso\"" --json "$json" ${VGPU_WAIT_ARGS:-} >"$log" 2>&1
    rc=$?
    if [ $rc != 0 ] || [ ! -s "$json" ]; then
      fail="$fail $iso: exit $rc: $(sed -n '/^[Ee]rror/,/^$/p' "$log" | head -n 4 | tr '\n' ' ');"
      continue
    fi
    grep -q 'goal: .*NOT MET' "$log" && fail="$fail $iso: CPU goal NOT MET;"
    note="$note $iso: $(grep -E 'host CPU while waiting|sync null kernel p50|async launches' "$log" | tr -s ' ' | tr '\n' ';')"
  done
  if [ -z "$fail" ]; then
    record wait PASS $((SECONDS - t0)) "$note"
  else
    record wait FAIL $((SECONDS - t0)) "$fail$note"
  fi
}

# ---- multigpu: pools over two GPUs (issue 6); needs at least two GPUs ------------------------
stage_multigpu() {
  local t0=$SECONDS log="$out/multigpu.log" rc gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  if [ "${gpus:-0}" -lt 2 ]; then
    record multigpu SKIP 0 "SKIPPED: $gpus GPU(s) visible, this stage needs two"
    return
  fi
  "$here/bin/vgpu-bench" multigpu --backend cuda --json "$out/multigpu.json" >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    record multigpu PASS $((SECONDS - t0)) "$(grep -E 'two and two|A alone|B alone' "$log" | tr -s ' ' | tr '\n' ';')"
  else
    record multigpu FAIL $((SECONDS - t0)) "exit $rc: $(tail -n 4 "$log" | tr '\n' ' ')"
  fi
}

# ---- tenancy: a victim's latency next to a runaway kernel and a reset storm (issue 13) ---------
stage_tenancy() {
  local t0=$SECONDS log="$out/tenancy.log" rc
  timeout -k 10 300 "$here/bin/vgpu-bench" tenancy --backend cuda --json "$out/tenancy.json" \
    >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    record tenancy PASS $((SECONDS - t0)) "$(grep -E 'p99 ratio' "$log" | tr -s ' ' | tr '\n' ';')"
  else
    record tenancy FAIL $((SECONDS - t0)) "exit $rc: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
}

# ---- soak: random valid work from 16 clients plus a hostile one, resources checked -----------
stage_soak() {
  local t0=$SECONDS log="$out/soak.log" rc minutes=${VGPU_SOAK_MINUTES:-10}
  timeout -k 10 $((minutes * 60 + 240)) "$here/bin/vgpu-bench" soak --backend cuda \
    --minutes "$minutes" --json "$out/soak.json" >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    record soak PASS $((SECONDS - t0)) "$minutes min on cuda; $(tail -n 2 "$log" | tr '\n' ' ')"
  else
    record soak FAIL $((SECONDS - t0)) "exit $rc: $(tail -n 4 "$log" | tr '\n' ' ')"
  fi
}

for s in env conformance bench cuda cuda-bench frameworks fw-bench tenants breakdown wait sched multigpu vm cuda-vm tenancy soak; do
  if wanted "$s"; then
    "stage_$s"
  fi
done

# ---- report ----------------------------------------------------------------------------------
failed=0
for v in "${verdicts[@]}"; do
  [ "$v" = PASS ] || [ "$v" = SKIP ] || failed=$((failed + 1))
done
if [ ${#verdicts[@]} = 0 ]; then
  echo "gpu-check: no stage ran (--only $only?)" >&2
  failed=1
fi
{
  echo "vgpu gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  grep -m1 -E '^(commit|git):' "$here/MANIFEST" 2>/dev/null
  for i in "${!names[@]}"; do
    printf '%-22s %-5s %5ss  %s\n' "${names[$i]}" "${verdicts[$i]}" "${secs[$i]}" "${notes[$i]}"
  done
  if [ -f "$out/bench-gpu.log" ]; then
    echo
    echo "benchmark (vgpu-bench gpu):"
    sed -n '/^  metric/,/ratio = vgpu/p' "$out/bench-gpu.log"
  fi
  if [ -f "$out/bench-gpu-fast.log" ]; then
    echo
    echo "breakdown (fault_isolation none: contexts inside vgpud):"
    sed -n '/^  metric/,/ratio = vgpu/p' "$out/bench-gpu-fast.log"
  fi
  for f in "$out"/wait-process.log "$out"/wait-none.log; do
    if [ -f "$f" ]; then
      echo
      sed -n '/^wait (host)/,/ratio = block/p' "$f"
    fi
  done
  if [ -f "$out/multigpu.log" ]; then
    echo
    cat "$out/multigpu.log"
  fi
  if [ -f "$out/tenants/report.txt" ]; then
    echo
    echo "tenants (two PyTorch processes in two VMs on one GPU; tenants.json):"
    cat "$out/tenants/report.txt"
  fi
  echo
  if [ $failed = 0 ]; then echo "gpu-check: PASS"; else echo "gpu-check: FAIL ($failed failed)"; fi
} >"$out/report.txt"
{
  printf '{\n  "ok": %s,\n  "failed": %d,\n' "$([ $failed = 0 ] && echo true || echo false)" "$failed"
  printf '  "date": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
  printf '  "host": %s,\n' "$(json_str "$(hostname)")"
  printf '  "gpu": %s,\n' "$(json_str "$(nvidia-smi -L 2>/dev/null | head -n1)")"
  printf '  "manifest": %s,\n' "$(json_str "$(cat "$here/MANIFEST" 2>/dev/null)")"
  printf '  "stages": ['
  for i in "${!names[@]}"; do
    [ "$i" = 0 ] || printf ','
    printf '\n    {"name": %s, "verdict": %s, "seconds": %s, "note": %s}' \
      "$(json_str "${names[$i]}")" "$(json_str "${verdicts[$i]}")" "${secs[$i]}" "$(json_str "${notes[$i]}")"
  done
  printf '\n  ],\n  "bench": '
  if [ -s "$out/bench-gpu.json" ]; then cat "$out/bench-gpu.json"; else printf 'null\n'; fi
  printf '}\n'
} >"$out/report.json"
cat "$out/report.txt"
[ $failed = 0 ]
