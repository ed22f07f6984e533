// The segmented kernels that move whole entries (bucket.h): the non-finite check, dense entries
// into and out of the fp32 allreduce channel, the compressors' inputs (error feedback with the
// loss-scale ratio, or a float32 staging copy), and the float32 accumulators of sparse decodes.
#include "kernels/cuda/bucket_common.cuh"

namespace gradcomp::kernels::cuda {
namespace {

// Blocks of the check: enough to fill an H100 several times over; each loops over its share.
constexpr unsigned kCheckBlocks = 1024;

template <ElementType T>
__global__ void check_finite_kernel(const void* bucket, int64_t n, uint32_t* state, void* slot,
                                    ElementType slot_type) {
  bool bad = false;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  // Four independent loads in flight per thread.
  for (; i + 3 * stride < n; i += 4 * stride) {
    bad |= not_finite<T>(bucket, i) | not_finite<T>(bucket, i + stride) |
           not_finite<T>(bucket, i + 2 * stride) | not_finite<T>(bucket, i + 3 * stride);
  }
  for (; i < n; i += stride) bad |= not_finite<T>(bucket, i);
  bad = __syncthreads_or(bad) != 0;
  if (threadIdx.x != 0) return;
  if (bad) atomicOr(&state[0], 1u);
  // The last block to finish sees every block's flag (the fence orders this block's flag before
  // its count) and writes the message's flag slot.
  __threadfence();
  if (atomicAdd(&state[1], 1u) != gridDim.x - 1) return;
  const bool flagged = atomicOr(&state[0], 0u) != 0;
  switch (slot_type) {
    case ElementType::kFloat32:
      *static_cast<float*>(slot) = flagged ? 1.0f : 0.0f;
      break;
    case ElementType::kBFloat16:
      *static_cast<uint16_t*>(slot) = float_to_bfloat16(flagged ? 1.0f : 0.0f);
      break;
    case ElementType::kFloat16:
      *static_cast<uint16_t*>(slot) = float_to_half(flagged ? 1.0f : 0.0f);
      break;
    case ElementType::kByte:
      *static_cast<uint8_t*>(slot) = flagged ? 1 : 0;
      break;
  }
}

template <ElementType T>
__global__ void pack_dense_kernel(const void* bucket, Segments<CopySegment> segments, Tiles tiles,
                                  float* channel, const uint32_t* nonfinite) {
  const Tile tile = tiles[blockIdx.x];
  const CopySegment s = segments[tile.segment];
  const bool bad = *nonfinite != 0;
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    channel[s.channel + e] = bad ? 0.0f : load_as_float<T>(bucket, s.bucket + e);
  }
}

template <ElementType T>
__global__ void unpack_dense_kernel(const float* channel, Segments<CopySegment> segments,
                                    Tiles tiles, float inverse_world, FlagSlots flags,
                                    void* bucket) {
  const bool bad = block_flagged(flags);
  const Tile tile = tiles[blockIdx.x];
  const CopySegment s = segments[tile.segment];
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    // The entry-by-entry decode divides the channel (a multiplication by the reciprocal on
    // CUDA), then copies, or adds into zeros for "none".
    float value = channel[s.channel + e] * inverse_world;
    if (s.add_zero) value = 0.0f + value;
    store_from_float<T>(bucket, s.bucket + e, bad ? NAN : value);
  }
}

template <ElementType T>
__global__ void prepare_inputs_kernel(const void* bucket, Segments<InputSegment> segments,
                                      Tiles tiles, const float* ratio, const uint32_t* nonfinite) {
  const Tile tile = tiles[blockIdx.x];
  const InputSegment s = segments[tile.segment];
  const bool bad = *nonfinite != 0;
  const bool scaled = ratio != nullptr;
  const float factor = scaled ? *ratio : 1.0f;
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    if (!s.accumulate) {
      s.target[e] = load_as_float<T>(bucket, s.bucket + e);
      continue;
    }
    // Two roundings, as residual.mul_(ratio) followed by residual.add_(grad).
    float r = s.target[e];
    if (scaled) r = r * factor;
    if (!bad) r = r + load_as_float<T>(bucket, s.bucket + e);
    s.target[e] = r;
  }
}

__global__ void zero_accumulators_kernel(Segments<AccumulatorSegment> segments, Tiles tiles) {
  const Tile tile = tiles[blockIdx.x];
  const AccumulatorSegment s = segments[tile.segment];
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) s.out[tile.begin + j] = 0.0f;
}

template <ElementType T>
__global__ void finish_accumulators_kernel(Segments<AccumulatorSegment> segments, Tiles tiles,
                                           FlagSlots flags, void* bucket) {
  const bool bad = block_flagged(flags);
  const Tile tile = tiles[blockIdx.x];
  const AccumulatorSegment s = segments[tile.segment];
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    store_from_float<T>(bucket, s.bucket + e, bad ? NAN : s.out[e] * s.scale);
  }
}

unsigned tile_grid(const Tiles& tiles) { return static_cast<unsigned>(tiles.count); }

}  // namespace

cudaError_t check_finite(const void* bucket, ElementType type, int64_t n, uint32_t* state,
                         void* slot, ElementType slot_type, cudaStream_t stream) {
  if (n < 1) return cudaErrorInvalidValue;
  const unsigned blocks = std::min(grid_for((n + 3) / 4), kCheckBlocks);
  GRADCOMP_DISPATCH_GRADIENT_TYPE(
      type, T,
      check_finite_kernel<T><<<blocks, kThreads, 0, stream>>>(bucket, n, state, slot, slot_type));
  return cudaGetLastError();
}

cudaError_t pack_dense(const void* bucket, ElementType type, Segments<CopySegment> segments,
                       Tiles tiles, float* channel, const uint32_t* nonfinite,
                       cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(type, T,
                                  pack_dense_kernel<T><<<tile_grid(tiles), kThreads, 0, stream>>>(
                                      bucket, segments, tiles, channel, nonfinite));
  return cudaGetLastError();
}

cudaError_t unpack_dense(const float* channel, Segments<CopySegment> segments, Tiles tiles,
                         float inverse_world, FlagSlots flags, void* bucket, ElementType type,
                         cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(type, T,
                                  unpack_dense_kernel<T><<<tile_grid(tiles), kThreads, 0, stream>>>(
                                      channel, segments, tiles, inverse_world, flags, bucket));
  return cudaGetLastError();
}

cudaError_t prepare_inputs(const void* bucket, ElementType type, Segments<InputSegment> segments,
                           Tiles tiles, const float* ratio, const uint32_t* nonfinite,
                           cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(
      type, T,
      prepare_inputs_kernel<T>
      <<<tile_grid(tiles), kThreads, 0, stream>>>(bucket, segments, tiles, ratio, nonfinite));
  return cudaGetLastError();
}

cudaError_t zero_accumulators(Segments<AccumulatorSegment> segments, Tiles tiles,
                              cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  zero_accumulators_kernel<<<tile_grid(tiles), kThreads, 0, stream>>>(segments, tiles);
  return cudaGetLastError();
}

cudaError_t finish_accumulators(Segments<AccumulatorSegment> segments, Tiles tiles, FlagSlots flags,
                                void* bucket, ElementType type, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(
      type, T,
      finish_accumulators_kernel<T>
      <<<tile_grid(tiles), kThreads, 0, stream>>>(segments, tiles, flags, bucket));
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
