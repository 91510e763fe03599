#!/usr/bin/env bash
# Installs NVRTC (CUDA's runtime compiler) from PyPI into a virtual
# environment, so `cargo test -p adjoint-kernels --test cuda_nvrtc` can
# compile every kernels/cuda/*.cu to PTX and CUBIN on a machine without a
# GPU or a CUDA toolkit. Prints one line to stdout, the export to eval:
#
#   eval "$(scripts/nvrtc-env.sh)"            # venv in target/nvrtc-venv
#   eval "$(scripts/nvrtc-env.sh /tmp/venv)"  # or where you say
#
# The wheel is pinned to CUDA 13.0's NVRTC: it writes PTX ISA 9.0, which
# the R580 (CUDA 13.0) drivers of the GPU machines load. Progress goes to
# stderr. Exit status 0 on success, 1 when the wheel cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-target/nvrtc-venv}
wheel=${NVRTC_WHEEL:-nvidia-cuda-nvrtc==13.0.88}

if [ ! -x "$venv/bin/pip" ]; then
  echo "nvrtc-env: creating $venv" >&2
  python3 -m venv "$venv" >&2 \
    || { command -v apt-get >/dev/null 2>&1 && apt-get install -y -q python3-venv >&2 && python3 -m venv "$venv" >&2; } \
    || { echo "nvrtc-env: cannot create a virtual environment" >&2; exit 1; }
fi
if ! "$venv/bin/pip" install -q --disable-pip-version-check "$wheel" >&2; then
  echo "nvrtc-env: cannot install $wheel" >&2
  exit 1
fi
lib=$(find "$venv" -name 'libnvrtc.so.13' -print -quit 2>/dev/null || true)
if [ -z "$lib" ]; then
  echo "nvrtc-env: $wheel installed no libnvrtc.so.13" >&2
  exit 1
fi
dir=$(cd "$(dirname "$lib")" && pwd)
echo "nvrtc-env: NVRTC in $dir" >&2
# NVRTC loads libnvrtc-builtins from the same folder by name, so the folder
# goes on the search path, not just the library.
echo "export LD_LIBRARY_PATH=\"$dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
