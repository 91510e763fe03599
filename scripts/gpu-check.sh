#!/usr/bin/env bash
# Checks adjoint on a GPU machine (CUDA 13 driver, NCCL in Python's
# nvidia/nccl/lib, NVRTC, PyTorch; no Rust) from a bundle built elsewhere by
# scripts/gpu-bundle.sh:
#
#   scripts/gpu-check.sh [BUNDLE]   (default target/gpu-bundle/adjoint-gpu-bundle.tar.xz)
#
# Unpacks the bundle, puts the CUDA libraries of Python's `nvidia` packages
# on LD_LIBRARY_PATH (with the libnccl.so link cudarc needs), then runs each
# stage under `timeout`:
#   1. gpu          nvidia-smi: the GPU, driver and memory;
#   2. libraries    which CUDA libraries load from where;
#   3. cuda_nvrtc   every kernels/cuda/*.cu through NVRTC (test binary);
#   4. cuda_ops     the CUDA backend against the CPU backend, op by op;
#      cuda_trainer training on CUDA with NCCL reducing the gradient
#                   buckets on the device, against the host path and the
#                   CPU (gradient accumulation, clipping, bf16 all-reduce);
#   5. nccl_job     `adjoint up --workers 1 --device cuda`, the bundled
#                   example job submitted with device gpu, watched to the
#                   end: SUCCEEDED, on CUDA, through an NCCL communicator;
#   6. bench        `adjoint bench mlp|transformer|moe --device cuda` and
#                   PyTorch's bench/torch_bench.py on the same GPU (every
#                   timed step synchronised, TF32 off on both), then the
#                   ratio of their step times per workload; then the
#                   transformer in bf16 (`--precision bf16` beside PyTorch
#                   autocast bf16; target ratio <= 1.0).
#
# Prints one JSON line per result (per stage, and per test of the test
# binaries), then one summary line. A test that says "skipped" counts as a
# failure here: on a GPU machine nothing should skip. The whole script stays
# under 4 minutes (CHECK_BUDGET seconds, default 230). Exit status 0 when
# everything passed, 1 otherwise.
set -uo pipefail

bundle=${1:-target/gpu-bundle/adjoint-gpu-bundle.tar.xz}
budget=${CHECK_BUDGET:-230}
start=$SECONDS
passed=0
failed=0
skipped=0

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/}
  s=${s//$'\t'/ }
  printf '"%s"' "$s"
}

# result STAGE NAME STATUS SECONDS DETAIL: one JSON line; counts it.
result() {
  local stage=$1 name=$2 status=$3 secs=$4 detail=${5:-}
  case $status in
    ok) passed=$((passed + 1)) ;;
    skipped) skipped=$((skipped + 1)) ;;
    *) failed=$((failed + 1)) ;;
  esac
  printf '{"stage":%s,"name":%s,"status":%s,"seconds":%s,"detail":%s}\n' \
    "$(json_str "$stage")" "$(json_str "$name")" "$(json_str "$status")" \
    "$secs" "$(json_str "$detail")"
}

# Seconds a stage may take: its own limit, or what is left of the budget.
limit() {
  local left=$((budget - (SECONDS - start)))
  [ "$left" -lt 1 ] && left=1
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

summary() {
  local ok=true
  [ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ] || ok=false
  printf '{"summary":true,"ok":%s,"passed":%d,"failed":%d,"skipped":%d,"seconds":%d}\n' \
    "$ok" "$passed" "$failed" "$skipped" "$((SECONDS - start))"
  [ "$ok" = true ]
}

# ----- unpack -----
work=$(mktemp -d "${TMPDIR:-/tmp}/adjoint-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
t=$SECONDS
if [ ! -f "$bundle" ]; then
  result bundle unpack failed 0 "no bundle at $bundle (build it with scripts/gpu-bundle.sh)"
  summary
  exit 1
fi
if ! tar -xJf "$bundle" -C "$work" 2>"$work/tar.err" \
  && ! python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$work"; then
  result bundle unpack failed $((SECONDS - t)) "$(head -c 500 "$work/tar.err")"
  summary
  exit 1
fi
root=$work/adjoint-gpu-bundle
result bundle unpack ok $((SECONDS - t)) "$(sed -n 2,4p "$root/MANIFEST" | tr '\n' ';')"

# ----- library paths -----
# Every nvidia/*/lib folder of the Python that has PyTorch (cu13/lib holds
# CUDA 13's runtime, cuBLAS and NVRTC; nccl/lib holds NCCL), and a
# libnccl.so link, the only NCCL name cudarc tries (libnccl.so.2 is what
# the wheel installs).
mkdir -p "$work/lib"
py_dirs=$(timeout 30 python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
for r in roots:
    for lib in sorted(glob.glob(os.path.join(r, "*", "lib"))):
        print(lib)
PY
)
ld=$work/lib
for d in $py_dirs; do ld=$ld:$d; done
nccl=$(for d in $py_dirs; do ls "$d"/libnccl.so* 2>/dev/null; done | head -n 1)
[ -n "$nccl" ] && ln -sf "$nccl" "$work/lib/libnccl.so"
export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ----- 1. the GPU -----
t=$SECONDS
if smi=$(timeout "$(limit 20)" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
  --format=csv,noheader 2>&1); then
  result gpu nvidia-smi ok $((SECONDS - t)) "$smi"
else
  result gpu nvidia-smi failed $((SECONDS - t)) "$smi"
fi

# ----- 2. libraries -----
# Each group loads by one of its names (cudarc tries CUDA 13's and 12's).
t=$SECONDS
found=""
missing=""
for group in libcuda.so.1 "libnvrtc.so.13 libnvrtc.so.12" "libcublas.so.13 libcublas.so.12" libnccl.so; do
  hit=""
  for lib in $group; do
    if timeout 10 python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib" 2>/dev/null; then
      hit=$lib
      break
    fi
  done
  if [ -n "$hit" ]; then found="$found $hit"; else missing="$missing ${group%% *}"; fi
done
if [ -z "$missing" ]; then
  result libraries load ok $((SECONDS - t)) "loaded:$found"
else
  result libraries load failed $((SECONDS - t)) "missing:$missing; loaded:$found; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi

# run_tests STAGE SECONDS: runs the bundle's test binary STAGE (one thread,
# each test's output kept) and emits a line per test and one for the stage.
run_tests() {
  local stage=$1 bin=$root/tests/$1 log=$work/$1.log t=$SECONDS rc
  if [ ! -x "$bin" ]; then
    result "$stage" binary failed 0 "not in the bundle"
    return
  fi
  timeout "$(limit "$2")" "$bin" --test-threads=1 --show-output >"$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t)) name status detail
  while read -r name status; do
    detail=""
    if grep -q "^$name: skipped:" "$log"; then
      status=skipped
      detail=$(grep -m1 "^$name: skipped:" "$log")
    elif [ "$status" = FAILED ]; then
      status=failed
      detail=$(grep -m1 -A3 "thread '$name' .*panicked" "$log" | head -c 800)
    fi
    result "$stage" "$name" "$status" "$secs" "$detail"
  done < <(sed -n 's/^test \([A-Za-z0-9_:]*\) \.\.\. \(ok\|FAILED\|ignored\)$/\1 \2/p' "$log")
  case $rc in
    0) result "$stage" all ok "$secs" "$(grep -m1 '^test result:' "$log")" ;;
    124 | 137) result "$stage" all timeout "$secs" "$(tail -n 5 "$log")" ;;
    *) result "$stage" all failed "$secs" "exit $rc: $(tail -n 8 "$log")" ;;
  esac
}

# ----- 3. NVRTC -----
run_tests cuda_nvrtc 60

# ----- 4. CUDA against the CPU -----
run_tests cuda_ops 120

# ----- 4b. training with NCCL reducing buckets on the device -----
run_tests cuda_trainer 90

# ----- 5. a 1-rank NCCL job through `adjoint up --device cuda` -----
nccl_job() {
  local t=$SECONDS bin=$root/bin/adjoint dir=$work/up out=$work/up.out addr="" id="" status
  if [ ! -x "$bin" ] || [ ! -f "$root/example/model.json" ]; then
    result nccl_job setup failed 0 "no adjoint binary or example in the bundle"
    return
  fi
  "$bin" up --workers 1 --device cuda --dir "$dir" >"$out" 2>&1 &
  local up=$!
  local wait_until=$((SECONDS + $(limit 40)))
  while [ $SECONDS -lt $wait_until ] && kill -0 "$up" 2>/dev/null; do
    addr=$(sed -n 's/.*export ADJOINT_ADDR=\([^ ]*\).*/\1/p' "$out" | head -n 1)
    [ -n "$addr" ] && break
    sleep 0.2
  done
  if [ -z "$addr" ]; then
    result nccl_job up failed $((SECONDS - t)) "$(tail -n 5 "$out"; tail -n 5 "$dir"/logs/worker-0.log 2>/dev/null)"
    kill "$up" 2>/dev/null; wait "$up" 2>/dev/null
    return
  fi
  result nccl_job up ok $((SECONDS - t)) "$(ADJOINT_ADDR=$addr timeout 10 "$bin" workers 2>&1 | tail -n 1)"
  t=$SECONDS
  id=$(ADJOINT_ADDR=$addr timeout 30 "$bin" submit --graph "$root/example/model.json" \
    --data "$root/example/train.safetensors" --device gpu --batch-size 32 --steps 30 \
    --optimizer sgd:lr=0.1,momentum=0.9 2>"$work/submit.err" | tail -n 1)
  if [ -z "$id" ]; then
    result nccl_job submit failed $((SECONDS - t)) "$(head -c 600 "$work/submit.err")"
  else
    ADJOINT_ADDR=$addr timeout "$(limit 90)" "$bin" watch "$id" >"$work/watch.out" 2>&1
    status=$(ADJOINT_ADDR=$addr timeout 10 "$bin" status "$id" 2>&1)
    ADJOINT_ADDR=$addr timeout 10 "$bin" logs "$id" >"$work/job.log" 2>&1
    local nccl_line device_line
    nccl_line=$(grep -m1 "NCCL communicator" "$work/job.log")
    device_line=$(grep -m1 "compiled on" "$work/job.log" | sed 's/:.*compiled on/: compiled on/' | head -c 200)
    if echo "$status" | grep -qi succeeded && [ -n "$nccl_line" ] && echo "$device_line" | grep -q cuda; then
      result nccl_job job ok $((SECONDS - t)) "$id SUCCEEDED; $nccl_line; $device_line; $(tail -n 2 "$work/watch.out" | tr "\n" " " | head -c 200)"
    else
      result nccl_job job failed $((SECONDS - t)) "$(echo "$status" | head -n 3); $nccl_line; $device_line; $(tail -n 6 "$work/job.log")"
    fi
  fi
  kill "$up" 2>/dev/null
  wait "$up" 2>/dev/null
}
nccl_job

# ----- 6. adjoint against PyTorch on this GPU -----
# Each run prints one JSON line with step_ms; the stage line for each
# workload gives both and their ratio (adjoint / PyTorch; target <= 1.0 for
# the transformer).
bench_one() {
  local w=$1 p=${2:-f32} t=$SECONDS ours theirs ours_ms theirs_ms
  local tag=$w
  [ "$p" = f32 ] || tag=${w}_$p
  ours=$(timeout "$(limit 45)" "$root/bin/adjoint" bench "$w" --device cuda --precision "$p" --steps 10 --warmup 3 2>"$work/bench-$tag.err" | tail -n 1)
  if [ -n "$ours" ]; then
    result bench "adjoint_$tag" ok $((SECONDS - t)) "$ours"
  else
    result bench "adjoint_$tag" failed $((SECONDS - t)) "$(tail -n 5 "$work/bench-$tag.err")"
  fi
  t=$SECONDS
  theirs=$(cd "$root/bench" && timeout "$(limit 45)" python3 torch_bench.py "$w" --device cuda --precision "$p" --steps 10 --warmup 3 2>"$work/torch-$tag.err" | tail -n 1)
  if [ -n "$theirs" ]; then
    result bench "pytorch_$tag" ok $((SECONDS - t)) "$theirs"
  else
    result bench "pytorch_$tag" failed $((SECONDS - t)) "$(tail -n 5 "$work/torch-$tag.err")"
  fi
  ours_ms=$(printf '%s' "$ours" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])' 2>/dev/null)
  theirs_ms=$(printf '%s' "$theirs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])' 2>/dev/null)
  if [ -n "$ours_ms" ] && [ -n "$theirs_ms" ]; then
    printf '{"stage":"bench","name":"ratio_%s","adjoint_step_ms":%s,"pytorch_step_ms":%s,"ratio":%s}\n' \
      "$tag" "$ours_ms" "$theirs_ms" "$(python3 -c "print(round($ours_ms / $theirs_ms, 3))")"
  fi
}
for w in mlp transformer moe; do
  bench_one "$w"
done
bench_one transformer bf16

summary
