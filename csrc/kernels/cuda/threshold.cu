// Threshold selection on CUDA: a stable CUB select of the indices whose magnitude key reaches
// the threshold, then a gather of their values.
#include <thrust/iterator/counting_iterator.h>

#include <cub/device/device_select.cuh>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

struct AtLeast {
  const float* x;
  uint32_t threshold_key;
  __device__ bool operator()(int32_t i) const { return magnitude_bits(x[i]) >= threshold_key; }
};

__global__ void gather_selected_kernel(const float* x, const int32_t* indices, const int64_t* count,
                                       int64_t capacity, float* values) {
  const int64_t total = *count < capacity ? *count : capacity;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < total;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[j] = x[indices[j]];
  }
}

}  // namespace

cudaError_t select_at_least(const float* x, int64_t n, uint32_t threshold_key, int32_t* indices,
                            int64_t* count, void* temp, size_t* temp_bytes, cudaStream_t stream) {
  const thrust::counting_iterator<int32_t> positions(0);
  return cub::DeviceSelect::If(temp, *temp_bytes, positions, indices, count, n,
                               AtLeast{x, threshold_key}, stream);
}

cudaError_t gather_selected(const float* x, const int32_t* indices, const int64_t* count,
                            int64_t capacity, float* values, cudaStream_t stream) {
  if (capacity == 0) return cudaSuccess;
  gather_selected_kernel<<<grid_for(capacity), kThreads, 0, stream>>>(x, indices, count, capacity,
                                                                      values);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
