#!/usr/bin/env bash
# Fuzzes adjoint's loaders with cargo-fuzz (libFuzzer), each target for a
# bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 20); TARGETs default to all of fuzz/Cargo.toml's
# (graph_proto, graph_json, onnx_import, job_spec). Each run starts from the
# seed corpus fuzz/corpus/<target>/ and fuzz/regressions/<target>/ (read
# only); what it finds goes under target/fuzz/ (the build, the grown corpus,
# artifacts), so the checkout stays clean.
#
# Needs the nightly toolchain and cargo-fuzz, installed when missing. Exit
# status: 0 when no target crashed, 1 when one did (the crashing input is
# copied into fuzz/regressions/<target>/, where tests/tests/fuzz_corpus.rs
# replays it in `cargo test`), 2 when the tools cannot be installed.
#
# Environment: FUZZ_SANITIZER (cargo fuzz --sanitizer; default none: the
# code is safe Rust, and without ASan each second runs about twice the
# inputs), FUZZ_CODEGEN_UNITS (default 16: a faster build for slightly
# slower runs than cargo-fuzz's 1), FUZZ_JOBS (build jobs), FUZZ_TARGET_DIR
# (default target/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-20}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(graph_proto graph_json onnx_import job_spec)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "--- installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal || {
    echo "fuzz.sh: cannot install the nightly toolchain" >&2
    exit 2
  }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "--- installing cargo-fuzz"
  cargo install cargo-fuzz --locked || {
    echo "fuzz.sh: cannot install cargo-fuzz" >&2
    exit 2
  }
fi

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$root/target/fuzz}"
work="$CARGO_TARGET_DIR/work"
sanitizer=${FUZZ_SANITIZER:-none}
build_flags=(--release --debug-assertions --sanitizer "$sanitizer"
  --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
if [ -n "${FUZZ_JOBS:-}" ]; then
  build_flags+=(--jobs "$FUZZ_JOBS")
fi

echo "--- building the fuzz targets (sanitizer $sanitizer)"
start=$SECONDS
cargo +nightly fuzz build "${build_flags[@]}"
echo "built in $((SECONDS - start)) s"

failed=()
for t in "${targets[@]}"; do
  echo "--- fuzzing $t for $seconds s"
  rm -rf "$work/artifacts/$t"
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  seeds=("$work/corpus/$t")
  for d in "fuzz/corpus/$t" "fuzz/regressions/$t"; do
    if [ -d "$d" ]; then seeds+=("$d"); fi
  done
  log="$work/$t.log"
  status=0
  # The first corpus folder is the one libFuzzer writes new inputs into.
  cargo +nightly fuzz run "${build_flags[@]}" "$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  # The last status line ("#N DONE cov: ... ft: ... corp: ... exec/s: ...")
  # and the final stats.
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    tail -n 60 "$log"
    mkdir -p "fuzz/regressions/$t"
    found=0
    for f in "$work/artifacts/$t"/*; do
      [ -f "$f" ] || continue
      cp "$f" "fuzz/regressions/$t/"
      echo "fuzz.sh: $t failed on $f; copied to fuzz/regressions/$t/$(basename "$f")"
      found=1
    done
    if [ "$found" -eq 0 ]; then
      echo "fuzz.sh: $t exited with $status and left no input; see $log"
    else
      echo "fuzz.sh: fix the bug and add the input (git add fuzz/regressions/$t/):" \
        "tests/tests/fuzz_corpus.rs then replays it in cargo test, expecting an error"
    fi
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: no crashes (${targets[*]}, $seconds s each)"
