// Launch sizing and block reductions shared by the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace gradcomp::kernels::cuda {

constexpr int kThreads = 256;

// Enough blocks to fill a GPU for grid-stride loops, never more than the work needs.
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 8)));
}

// The sum over the block of every thread's value; the result is valid in every thread.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;
}

template <typename T, typename Op>
__device__ T block_reduce(T value, Op op) {
  __shared__ T partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T total = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) total = op(total, partial[w]);
  return total;
}

}  // namespace gradcomp::kernels::cuda
