#!/usr/bin/env bash
# The whole test suite from a fresh machine: set-up and build, C++ tests (ctest), Python tests
# (pytest), lint. Exits non-zero on any failure, including pytest collecting no tests.
set -euo pipefail
cd "$(dirname "$0")/.."

GRADCOMP_BUILD_TESTS=1 bash scripts/setup.sh

echo "== C++ tests (ctest)"
ctest --test-dir build/cmake --output-on-failure

echo "== Python tests (pytest)"
python3 -m pytest tests/python -q -p no:cacheprovider

echo "== lint and types (ruff, clang-format, mypy)"
python3 -m ruff check python tests benchmarks examples setup.py
python3 -m ruff format --check python tests benchmarks examples setup.py
find csrc tests/cpp \( -name '*.cpp' -o -name '*.h' \) -print0 | xargs -0 clang-format --dry-run --Werror
python3 -m mypy python/gradcomp --ignore-missing-imports
echo "== all tests passed"
