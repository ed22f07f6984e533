#!/usr/bin/env bash
# Fills .gpu_deps/ (git-ignored) with what scripts/gpu_check.sh needs on a lent GPU machine,
# which has no network: a GoogleTest source tree (from Debian's libgtest-dev) and PyPI's
# nvidia-cuda-cccl 13.3 wheel (CCCL 3.3 headers, for the cub::DeviceTopK comparison). Run it on
# the CPU machine, then carry .gpu_deps with the GPU call.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_deps
if [ ! -d .gpu_deps/googletest ]; then
  if [ ! -d /usr/src/googletest ]; then
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get install -y -q libgtest-dev
  fi
  cp -r /usr/src/googletest .gpu_deps/googletest
fi
ls .gpu_deps/nvidia_cuda_cccl-13.*.whl > /dev/null 2>&1 ||
  python3 -m pip download -q --disable-pip-version-check --no-deps 'nvidia-cuda-cccl==13.3.*' \
    -d .gpu_deps
du -sh .gpu_deps
