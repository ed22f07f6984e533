#!/usr/bin/env bash
# The whole test suite from a fresh machine: set-up and build, C++ tests (ctest), Python tests
# (pytest), lint. Exits non-zero on any failure, including pytest collecting no tests.
set -euo pipefail
cd "$(dirname "$0")/.."

GRADCOMP_BUILD_TESTS=1 bash scripts/setup.sh

# With nvcc present every .cu file must have compiled (sm_80 and sm_90), GPU or not.
if command -v nvcc > /dev/null; then
  test -f build/cmake/libgradcomp_kernels_cuda.a || {
    echo "nvcc is installed but the CUDA kernels were not built" >&2
    exit 1
  }
  echo "== CUDA kernels compiled ($(grep '^CMAKE_CUDA_ARCHITECTURES' build/cmake/CMakeCache.txt))"
fi

echo "== C++ tests (ctest; CUDA tests skip without a GPU)"
ctest --test-dir build/cmake --output-on-failure

echo "== sanitizers: C++ tests and the decoder fuzzer under ASan + UBSan (scripts/sanitize.sh)"
bash scripts/sanitize.sh

echo "== Python tests (pytest)"
python3 -m pytest tests/python -q -p no:cacheprovider

echo "== convergence suites, CI subset (docs/convergence.md; the full suite: pytest tests/convergence)"
python3 -m pytest tests/convergence -q -p no:cacheprovider --convergence-subset ci

echo "== lint and types (ruff, clang-format, mypy)"
python3 -m ruff check python tests benchmarks examples scripts setup.py
python3 -m ruff format --check python tests benchmarks examples scripts setup.py
find csrc tests/cpp \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 | xargs -0 clang-format --dry-run --Werror
python3 -m mypy python/gradcomp --ignore-missing-imports
echo "== all tests passed"
