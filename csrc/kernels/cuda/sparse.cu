// Random-K draw and gather, and the sparse decode every (value, index) method uses.
#include "kernels/common/philox.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

__device__ int64_t block_begin(int64_t n, int64_t k, int64_t block) { return block * n / k; }

__global__ void randomk_indices_kernel(int64_t n, int64_t k, uint64_t key, uint64_t step,
                                       int32_t* indices) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < k;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t begin = block_begin(n, k, i);
    const auto size = static_cast<uint32_t>(block_begin(n, k, i + 1) - begin);
    const uint32_t word = philox_block(key, step, static_cast<uint64_t>(i) / 4).v[i % 4];
    indices[i] = static_cast<int32_t>(begin + uniform_below(word, size));
  }
}

__global__ void randomk_gather_kernel(const float* x, int64_t n, int64_t k, const int32_t* indices,
                                      bool unbiased, float* values) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < k;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float scale =
        unbiased ? static_cast<float>(block_begin(n, k, i + 1) - block_begin(n, k, i)) : 1.0f;
    values[i] = x[indices[i]] * scale;
  }
}

__global__ void sparse_accumulate_kernel(const float* values, const int32_t* indices, int64_t k,
                                         float* out, int64_t n, float alpha,
                                         unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < k;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t index = indices[i];
    if (index < 0 || index >= n) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    atomicAdd(out + index, alpha * values[i]);
  }
}

}  // namespace

cudaError_t randomk_indices(int64_t n, int64_t k, uint64_t key, uint64_t step, int32_t* indices,
                            cudaStream_t stream) {
  randomk_indices_kernel<<<grid_for(k), kThreads, 0, stream>>>(n, k, key, step, indices);
  return cudaGetLastError();
}

cudaError_t randomk_gather(const float* x, int64_t n, int64_t k, const int32_t* indices,
                           bool unbiased, float* values, cudaStream_t stream) {
  randomk_gather_kernel<<<grid_for(k), kThreads, 0, stream>>>(x, n, k, indices, unbiased, values);
  return cudaGetLastError();
}

cudaError_t sparse_accumulate(const float* values, const int32_t* indices, int64_t k, float* out,
                              int64_t n, float alpha, unsigned long long* first_bad,
                              cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  sparse_accumulate_kernel<<<grid_for(k), kThreads, 0, stream>>>(values, indices, k, out, n, alpha,
                                                                 first_bad);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
