#!/usr/bin/env bash
# The C++ tests and the decoder fuzzer built with AddressSanitizer + UndefinedBehaviorSanitizer
# (build/asan), then run: any out-of-bounds access, use after free or undefined behaviour fails.
#   GRADCOMP_FUZZ_SECONDS=60 (default)  how long the decoder fuzzer runs
# Needs what scripts/setup.sh installs (torch, GoogleTest, cmake, ninja).
set -euo pipefail
cd "$(dirname "$0")/.."

torch_prefix=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build/asan -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DGRADCOMP_SANITIZE=ON \
  -DGRADCOMP_BUILD_TESTS=ON \
  -DGRADCOMP_BUILD_PYTHON=OFF \
  -DGRADCOMP_CUDA_KERNELS=OFF \
  -DGRADCOMP_FUZZ_SECONDS="${GRADCOMP_FUZZ_SECONDS:-60}" > /dev/null
cmake --build build/asan -j "$(nproc)"
# Leak checking is off: libtorch's own static state shows up as leaks at exit.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build/asan --output-on-failure
