#!/usr/bin/env bash
# Builds the bundle scripts/gpu-check.sh runs on a GPU machine, which has a
# CUDA driver, NCCL, NVRTC and PyTorch but no Rust:
#
#   scripts/gpu-bundle.sh [--tests-only]
#
# - test binaries (`cargo test --release --no-run`) of the CUDA suites:
#   kernels/tests/cuda_ops.rs (CUDA vs CPU, op by op),
#   kernels/tests/cuda_nvrtc.rs (every .cu through NVRTC) and
#   worker/tests/cuda_trainer.rs (training with buckets reduced on the
#   device by NCCL against the host path and the CPU);
# - stripped release binaries adjoint, adjoint-worker and adjoint-server
#   (skipped with --tests-only), for the 1-rank NCCL job and the benchmarks;
# - example/ (model.json, train.safetensors: the MLP job the service tests
#   train, written by an ignored test of tests/tests/service_device.rs) for
#   the NCCL job, and bench/torch_bench.py with bench/models.py for
#   PyTorch's side of the benchmarks;
# - scripts/gpu-check.sh and a MANIFEST (commit, rustc, sizes, sha256).
#
# Writes target/gpu-bundle/adjoint-gpu-bundle.tar.xz, which must stay under
# 60 MiB (64 MiB travels to the GPU machine), and prints its path and size.
# Exit status 1 when a build fails or the bundle is too large.
set -euo pipefail
cd "$(dirname "$0")/.."

tests_only=0
case "${1:-}" in
  --tests-only) tests_only=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu-bundle.sh [--tests-only]" >&2; exit 2 ;;
esac

limit=$((60 * 1024 * 1024))
out=target/gpu-bundle
name=adjoint-gpu-bundle
stage=$out/$name
tarball=$out/$name.tar.xz
suites=(cuda_ops cuda_nvrtc cuda_trainer)
rm -rf "$stage" "$tarball"
mkdir -p "$stage/bin" "$stage/tests" "$stage/example"

echo "--- test binaries: ${suites[*]}" >&2
cargo test --release -p adjoint-kernels --test cuda_ops --test cuda_nvrtc \
  -p adjoint-worker --test cuda_trainer --no-run \
  --message-format=json-render-diagnostics >"$out/build.json"
for s in "${suites[@]}"; do
  exe=$(python3 - "$out/build.json" "$s" <<'PY'
import json, sys
path, suite = sys.argv[1], sys.argv[2]
found = ""
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if (m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == suite
            and m.get("profile", {}).get("test") and m.get("executable")):
        found = m["executable"]
print(found)
PY
)
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "gpu-bundle: no test binary for $s" >&2
    exit 1
  fi
  cp "$exe" "$stage/tests/$s"
done

if [ "$tests_only" -eq 0 ]; then
  echo "--- release binaries" >&2
  cargo build --release -p adjoint-client -p adjoint-worker -p adjoint-server --bins >&2
  for b in adjoint adjoint-worker adjoint-server; do
    cp "target/release/$b" "$stage/bin/$b"
  done
fi

strip "$stage"/tests/* "$stage"/bin/* 2>/dev/null || true
echo "--- example job and PyTorch bench" >&2
ADJOINT_EXAMPLE_DIR="$PWD/$stage/example" cargo test --release -p adjoint-tests \
  --test service_device write_bundle_example -- --ignored --exact >&2
mkdir -p "$stage/bench"
cp bench/torch_bench.py bench/models.py "$stage/bench/"
cp scripts/gpu-check.sh "$stage/gpu-check.sh"
{
  echo "adjoint GPU bundle"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "rustc: $(rustc -V)"
  echo "files:"
  (cd "$stage" && find . -type f ! -name MANIFEST | sort | while read -r f; do
    printf '  %s %s %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
  done)
} >"$stage/MANIFEST"

echo "--- compressing" >&2
XZ_OPT="-9 -T2" tar -C "$out" -cJf "$tarball" "$name"
size=$(stat -c %s "$tarball")
echo "gpu-bundle: $tarball: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"
if [ "$size" -ge "$limit" ]; then
  echo "gpu-bundle: over the 60 MiB limit" >&2
  exit 1
fi
