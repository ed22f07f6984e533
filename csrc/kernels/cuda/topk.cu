// Exact magnitude Top-K on CUDA with the CPU kernel's selection rule (kernels/cpu/topk.h):
// ranked by the magnitude key, ties to the lower index, output in ascending index order.
//
// Radix select over the 31-bit key in three digits (11, 11, 9 bits): each digit is a
// histogram pass over the elements that match the digits chosen so far, then a one-block
// kernel picks the bin holding the k-th largest key; the state (prefix, and how many of the
// threshold key T are still needed) stays on the device, so nothing waits for the host. The
// output pass uses one exclusive scan of packed (greater than T, equal to T) counts, which
// gives every winner its output position in index order.
//
// Cost: five reads of the input. Candidate compaction between digit passes (as in AIR Top-K)
// would bring that to about two; that is the next step, to be measured on a GPU.
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <cub/device/device_scan.cuh>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

struct Digit {
  int shift;
  int bits;
};
constexpr Digit kDigits[3] = {{20, 11}, {9, 11}, {0, 9}};
constexpr int kMaxBins = 1 << 11;

struct SelectState {
  uint32_t prefix;  // the digits chosen so far
  uint32_t mask;    // which bits of the key they cover
  int64_t need;     // how many of the elements matching the prefix are still to be taken
};

__global__ void init_state_kernel(SelectState* state, int64_t k, uint32_t* histogram) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *state = SelectState{0u, 0u, k};
  for (int b = threadIdx.x; b < 3 * kMaxBins; b += blockDim.x) histogram[b] = 0;
}

__global__ void histogram_kernel(const float* x, int64_t n, Digit digit, const SelectState* state,
                                 uint32_t* histogram) {
  __shared__ uint32_t local[kMaxBins];
  const int bins = 1 << digit.bits;
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = state->prefix, mask = state->mask;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t key = magnitude_bits(x[i]);
    if ((key & mask) == prefix) atomicAdd(&local[(key >> digit.shift) & (bins - 1)], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    if (local[b] != 0) atomicAdd(&histogram[b], local[b]);
  }
}

// One thread: scan the bins from the largest and keep the one that holds the need-th element.
__global__ void choose_bin_kernel(const uint32_t* histogram, Digit digit, SelectState* state) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const int bins = 1 << digit.bits;
  int64_t need = state->need;
  int chosen = 0;
  for (int b = bins - 1; b > 0; --b) {
    if (static_cast<int64_t>(histogram[b]) >= need) {
      chosen = b;
      break;
    }
    need -= histogram[b];
  }
  state->prefix |= static_cast<uint32_t>(chosen) << digit.shift;
  state->mask |= static_cast<uint32_t>(bins - 1) << digit.shift;
  state->need = need;
}

// Packs (key > T, key == T) into one 64-bit count, so one scan counts both.
struct PackedCounts {
  const float* x;
  const SelectState* state;
  __device__ unsigned long long operator()(int64_t i) const {
    const uint32_t key = magnitude_bits(x[i]);
    const uint32_t threshold = state->prefix;
    return key > threshold ? 1ull : (key == threshold ? (1ull << 32) : 0ull);
  }
};

__global__ void write_winners_kernel(const float* x, int64_t n, const SelectState* state,
                                     const unsigned long long* before, float* values,
                                     int32_t* indices) {
  const uint32_t threshold = state->prefix;
  const auto ties = static_cast<unsigned long long>(state->need);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const uint32_t key = magnitude_bits(v);
    if (key < threshold) continue;
    const unsigned long long greater = before[i] & 0xffffffffull, equal = before[i] >> 32;
    int64_t position;
    if (key > threshold) {
      position = static_cast<int64_t>(greater + (equal < ties ? equal : ties));
    } else if (equal < ties) {
      position = static_cast<int64_t>(greater + equal);
    } else {
      continue;
    }
    values[position] = v;
    indices[position] = static_cast<int32_t>(i);
  }
}

size_t align(size_t bytes) { return (bytes + 255) / 256 * 256; }

using CountIterator = thrust::transform_iterator<PackedCounts, thrust::counting_iterator<int64_t>>;

}  // namespace

cudaError_t topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                        void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  const CountIterator counts(thrust::counting_iterator<int64_t>(0), PackedCounts{x, nullptr});
  size_t scan_bytes = 0;
  cudaError_t status = cub::DeviceScan::ExclusiveSum(
      nullptr, scan_bytes, counts, static_cast<unsigned long long*>(nullptr), n, stream);
  if (status != cudaSuccess) return status;
  const size_t state_bytes = align(sizeof(SelectState));
  const size_t histogram_bytes = align(3 * kMaxBins * sizeof(uint32_t));
  const size_t before_bytes = align(static_cast<size_t>(n) * sizeof(unsigned long long));
  const size_t total = state_bytes + histogram_bytes + before_bytes + align(scan_bytes);
  if (workspace == nullptr) {
    *workspace_bytes = total;
    return cudaSuccess;
  }
  if (*workspace_bytes < total) return cudaErrorInvalidValue;
  auto* base = static_cast<unsigned char*>(workspace);
  auto* state = reinterpret_cast<SelectState*>(base);
  auto* histogram = reinterpret_cast<uint32_t*>(base + state_bytes);
  auto* before = reinterpret_cast<unsigned long long*>(base + state_bytes + histogram_bytes);
  void* scan_temp = base + state_bytes + histogram_bytes + before_bytes;

  init_state_kernel<<<1, kThreads, 0, stream>>>(state, k, histogram);
  for (int d = 0; d < 3; ++d) {
    histogram_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, kDigits[d], state,
                                                           histogram + d * kMaxBins);
    choose_bin_kernel<<<1, 1, 0, stream>>>(histogram + d * kMaxBins, kDigits[d], state);
  }
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const CountIterator packed(thrust::counting_iterator<int64_t>(0), PackedCounts{x, state});
  status = cub::DeviceScan::ExclusiveSum(scan_temp, scan_bytes, packed, before, n, stream);
  if (status != cudaSuccess) return status;
  write_winners_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, state, before, values, indices);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
