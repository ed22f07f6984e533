// Random-K draw and gather, and the sparse decode every (value, index) method uses: per tensor
// (kernels.h) and segmented over a bucket (bucket.h).
#include "kernels/common/philox.h"
#include "kernels/cuda/bucket_common.cuh"
#include "kernels/cuda/kernels.h"

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

// The j-th Random-K index of a tensor: one uniform draw inside stratum j (kernels/cpu/randomk.h).
__device__ __forceinline__ int64_t randomk_index(int64_t n, int64_t k, uint64_t key, uint64_t step,
                                                 int64_t j, int64_t& size) {
  const int64_t begin = block_begin(n, k, j);
  size = block_begin(n, k, j + 1) - begin;
  const uint32_t word = philox_block(key, step, static_cast<uint64_t>(j) / 4).v[j % 4];
  return begin + uniform_below(word, static_cast<uint32_t>(size));
}

__global__ void randomk_encode_segments_kernel(Segments<RandomKSegment> segments, Tiles tiles,
                                               float* channel, uint64_t step,
                                               const uint32_t* nonfinite) {
  const Tile tile = tiles[blockIdx.x];
  const RandomKSegment s = segments[tile.segment];
  const bool bad = *nonfinite != 0;
  for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
    const int64_t j = tile.begin + t;
    if (bad) {
      channel[s.channel + j] = 0.0f;
      continue;
    }
    int64_t size = 0;
    const int64_t index = randomk_index(s.n, s.k, s.key, step, j, size);
    const float value = s.x[index] * (s.unbiased ? static_cast<float>(size) : 1.0f);
    channel[s.channel + j] = value;
    // The draw has no repeated index: this subtraction is exact and deterministic.
    if (s.residual != nullptr) s.residual[index] = s.residual[index] + -1.0f * value;
  }
}

__global__ void randomk_decode_segments_kernel(const float* channel,
                                               Segments<RandomKSegment> segments, Tiles tiles,
                                               float inverse_world, uint64_t step,
                                               FlagSlots flags) {
  if (block_flagged(flags)) return;  // the accumulators are finished as NaN
  const Tile tile = tiles[blockIdx.x];
  const RandomKSegment s = segments[tile.segment];
  for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
    const int64_t j = tile.begin + t;
    int64_t size = 0;
    const int64_t index = randomk_index(s.n, s.k, s.key, step, j, size);
    // The summed channel averaged first, then added into the zeroed accumulator.
    s.out[index] += 1.0f * (channel[s.channel + j] * inverse_world);
  }
}

__global__ void sparse_decode_segments_kernel(const uint8_t* rank_channel,
                                              Segments<SparseSegment> segments, Tiles tiles,
                                              FlagSlots flags, unsigned long long* first_bad) {
  if (block_flagged(flags)) return;
  const Tile tile = tiles[blockIdx.x];
  const SparseSegment s = segments[tile.segment];
  const uint8_t* payload = rank_channel + s.payload;
  for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
    const int64_t j = tile.begin + t;
    int32_t index;
    float value;
    if (s.int8) {
      const float scale = *reinterpret_cast<const float*>(payload);
      index = reinterpret_cast<const int32_t*>(payload + 4)[j];
      const auto code = reinterpret_cast<const int8_t*>(payload + 4 + 4 * s.k)[j];
      value = static_cast<float>(code) * scale;
    } else {
      value = reinterpret_cast<const float*>(payload)[j];
      index = reinterpret_cast<const int32_t*>(payload + 4 * s.k)[j];
    }
    if (index < 0 || index >= s.n) {
      atomicMin(first_bad, static_cast<unsigned long long>(j));
      continue;
    }
    atomicAdd(s.out + index, 1.0f * value);
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

cudaError_t randomk_encode_segments(Segments<RandomKSegment> segments, Tiles tiles, float* channel,
                                    uint64_t step, const uint32_t* nonfinite, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  randomk_encode_segments_kernel<<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
      segments, tiles, channel, step, nonfinite);
  return cudaGetLastError();
}

cudaError_t randomk_decode_segments(const float* channel, Segments<RandomKSegment> segments,
                                    Tiles tiles, float inverse_world, uint64_t step,
                                    FlagSlots flags, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  randomk_decode_segments_kernel<<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
      channel, segments, tiles, inverse_world, step, flags);
  return cudaGetLastError();
}

cudaError_t sparse_decode_segments(const uint8_t* rank_channel, Segments<SparseSegment> segments,
                                   Tiles tiles, FlagSlots flags, unsigned long long* first_bad,
                                   cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  sparse_decode_segments_kernel<<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
      rank_channel, segments, tiles, flags, first_bad);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
