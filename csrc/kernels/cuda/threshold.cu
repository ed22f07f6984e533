// Threshold selection on CUDA: a stable CUB select of the indices whose magnitude key reaches
// the threshold, then a gather of their values; and the Philox sample the threshold estimate
// is taken from.
#include <thrust/iterator/counting_iterator.h>

#include <cub/device/device_select.cuh>

#include "kernels/common/elementwise.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

struct AtLeast {
  const float* x;
  const uint32_t* threshold_key;  // on the device: an estimate computed there needs no copy
  __device__ bool operator()(int32_t i) const { return magnitude_bits(x[i]) >= *threshold_key; }
};

__global__ void sample_keys_kernel(const float* x, int64_t n, int64_t samples, uint64_t key,
                                   uint64_t step, uint32_t* keys) {
  const auto range = static_cast<uint32_t>(n);
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < samples;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (samples >= n) {
      keys[j] = magnitude_bits(x[j]);
      continue;
    }
    // Word j of the stream is word j % 4 of block j / 4, as on the CPU.
    const uint32_t word = philox_block(key, step, static_cast<uint64_t>(j) / 4).v[j % 4];
    keys[j] = magnitude_bits(x[uniform_below(word, range)]);
  }
}

__global__ void gather_selected_kernel(const float* x, const int32_t* indices, const int64_t* count,
                                       int64_t capacity, float* values) {
  const int64_t total = *count < capacity ? *count : capacity;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < total;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[j] = x[indices[j]];
  }
}

}  // namespace

cudaError_t select_at_least(const float* x, int64_t n, const uint32_t* threshold_key,
                            int32_t* indices, int64_t* count, void* temp, size_t* temp_bytes,
                            cudaStream_t stream) {
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

cudaError_t sample_magnitude_keys(const float* x, int64_t n, int64_t samples, uint64_t key,
                                  uint64_t step, uint32_t* keys, cudaStream_t stream) {
  const int64_t count = samples < n ? samples : n;
  if (count <= 0) return cudaSuccess;
  sample_keys_kernel<<<grid_for(count), kThreads, 0, stream>>>(x, n, count, key, step, keys);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
