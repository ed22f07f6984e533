#!/usr/bin/env bash
# Builds gradcomp with CUDA on a GPU machine, runs every CUDA test (several ranks sharing the
# GPU over Gloo included), the one-GPU DDP step-time benchmark and the GPU kernel benchmark, and
# writes one log (gpu_check.log) plus the benchmarks' JSON/markdown to $OUT (default:
# results/gpu_check). Steps run in order of importance, each with its own time limit, so that a
# deadline cuts the least important ones (the sanitizers last).
#
#   bash scripts/gpu_check.sh            # all steps
#   GPU_CHECK_STEPS="build ctest" bash scripts/gpu_check.sh
#   GPU_CHECK_DEADLINE=570 bash scripts/gpu_check.sh   # every step ends by then (seconds)
#
# On this project's lent GPU machines: first, on the CPU machine, `bash scripts/gpu_prepare.sh`
# (fills .gpu_deps/: a GoogleTest source tree and the CCCL 3.3 wheel, which the GPU machine,
# without network, lacks), then run there, carrying .gpu_deps:
#   CC=gcc-13 CXX=g++-13 CUDAHOSTCXX=g++-13 GPU_CHECK_DEADLINE=570 OUT=$OUT \
#     bash scripts/gpu_check.sh
# (2026-11-27: the image's default CXX=/opt/gcc/bin/g++ builds a _C that segfaults as soon as an
# error message formats an integer; Ubuntu's g++-13 works. The build step checks for that.)
#
# Needs: nvcc, a CUDA build of torch, cmake, ninja, pytest. GoogleTest comes from the system, or
# is built first from GTEST_SRC (default: .gpu_deps/googletest when present). The cubtopk step
# (our Top-K against cub::DeviceTopK) needs CCCL >= 3.3 headers: GRADCOMP_CCCL33 naming their
# include directory, or PyPI's nvidia-cuda-cccl 13.3 wheel in .gpu_deps/; without either it is
# skipped. Each step has its own time limit and a failing step does not stop the later ones;
# the script exits non-zero when any step failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/results/gpu_check}"
STEPS="${GPU_CHECK_STEPS:-info gtest build ctest pytest ddpbench bench cubtopk memcheck racecheck}"
DEADLINE="${GPU_CHECK_DEADLINE:-3600}"
BUILD_DIR="${GRADCOMP_BUILD_DIR:-$ROOT/build/gpu}"
PY="${PYTHON:-python3}"
LOGS="$(mktemp -d)"
mkdir -p "$OUT"
: >"$OUT/gpu_check.log"
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export CUDAARCHS="${CUDAARCHS:-90}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" GRADCOMP_BUILD_DIR="$BUILD_DIR" GRADCOMP_BUILD_TESTS=1

summary=()
failed=0
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, logging to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local start=$SECONDS left=$((DEADLINE - SECONDS - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    summary+=("$(printf '%-10s not run: past GPU_CHECK_DEADLINE' "$name")")
    failed=1
    return 0
  fi
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" bash -o pipefail -c "$*" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$LOGS/$name.log"
  { echo "=== $name rc=$rc"; cat "$LOGS/$name.log"; } >>"$OUT/gpu_check.log"
  summary+=("$(printf '%-10s rc=%-3s %4ds' "$name" "$rc" $((SECONDS - start)))")
  [ "$rc" -eq 0 ] || failed=1
}

step info 60 "nvidia-smi; nvcc --version | tail -2; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"

if [ -z "${GTEST_SRC:-}" ] && [ -d "$ROOT/.gpu_deps/googletest" ]; then
  GTEST_SRC="$ROOT/.gpu_deps/googletest"
fi
if [ -n "${GTEST_SRC:-}" ]; then
  step gtest 120 "cmake -S '$GTEST_SRC' -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX=/tmp/gtest && cmake --build /tmp/gtest-build && cmake --install /tmp/gtest-build"
  export GTest_ROOT=/tmp/gtest
fi

step build 300 "GRADCOMP_WITH_CUDA=${GRADCOMP_WITH_CUDA:-1} $PY setup.py build_ext --inplace && \
  $PY -c 'from gradcomp import _C; assert _C.has_cuda_kernels(), \"no CUDA kernels\"; print(\"has_cuda_kernels: True\")' && \
  { $PY -c 'import torch, gradcomp.ops as o
try: o.topk_compress(torch.ones(4), 0)
except ValueError as e: print(\"error messages work:\", e)' || \
  { echo 'gpu_check: _C crashed formatting an error message: rebuild with another CXX (see the top of this script)'; exit 1; }; }"

step ctest 120 "ctest --test-dir '$BUILD_DIR' --output-on-failure -j 8 && \
  '$BUILD_DIR/gradcomp_cuda_kernels_test' 2>&1 | tail -n 20"

# -m cuda: the CUDA tests, the bucket-level device path against the entry path and the CPU,
# and 2 and 3 Gloo ranks sharing the GPU (bit-identical parameters after 30 steps).
step pytest 240 "$PY -m pytest -q -m cuda -p no:cacheprovider tests/python -rfEs --durations=10"

# One-GPU DDP step time: plain DDP, every gradcomp method, PyTorch's hooks; 3 models x 2 bucket
# settings. --time-budget stops starting configurations in time (the JSON says which did not).
step ddpbench 200 "$PY benchmarks/bench_ddp_gpu.py --device cuda --time-budget 170 \
  --json '$OUT/ddp_gpu.json' --markdown '$OUT/ddp_gpu.md' && cat '$OUT/ddp_gpu.md'"

step bench 150 "$PY benchmarks/bench_compressors.py --device cuda --numel 1000000 25000000 \
  --ratio 0.001 0.01 --json '$OUT/compressors_cuda.json' --markdown '$OUT/compressors_cuda.md' && \
  cat '$OUT/compressors_cuda.md'"

if [ -z "${GRADCOMP_CCCL33:-}" ]; then
  wheel=$(ls "$ROOT"/.gpu_deps/nvidia_cuda_cccl-13.*.whl 2>/dev/null | head -n 1)
  if [ -n "$wheel" ]; then
    rm -rf /tmp/cccl33 && mkdir -p /tmp/cccl33 && $PY -m zipfile -e "$wheel" /tmp/cccl33 &&
      GRADCOMP_CCCL33=$(dirname "$(find /tmp/cccl33 -path '*/cub/device/device_topk.cuh' | head -n 1)")/../..
  fi
fi
if [ -n "${GRADCOMP_CCCL33:-}" ]; then
  step cubtopk 150 "nvcc -O3 -std=c++17 -arch=sm_90 --fmad=false -I'$GRADCOMP_CCCL33' -Icsrc \
    benchmarks/cuda/topk_vs_cub.cu csrc/kernels/cuda/topk.cu csrc/kernels/common/segments.cpp \
    -o /tmp/topk_vs_cub && /tmp/topk_vs_cub 25000000 | tee '$OUT/topk_vs_cub.json'"
else
  summary+=("$(printf '%-10s skipped: no CCCL >= 3.3 headers (see the top of this script)' cubtopk)")
fi

step memcheck 150 "compute-sanitizer --tool memcheck --error-exitcode 9 '$BUILD_DIR/gradcomp_cuda_kernels_test'"

step racecheck 150 "compute-sanitizer --tool racecheck --error-exitcode 9 '$BUILD_DIR/gradcomp_cuda_kernels_test'"

echo "=== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
