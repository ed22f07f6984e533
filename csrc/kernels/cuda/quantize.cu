// Chunked quantizers and casts on CUDA (layouts and semantics: kernels/cpu/quantize.h), per
// tensor (kernels.h) and segmented over a bucket (bucket.h). The per-tensor encoders run the
// segmented kernel on one segment, so both give the same bytes.
//
// Encoders give each chunk one warp: the chunk's statistic is a warp reduction (in double for
// the sums, so it can differ from the CPU's sequential sum in the last bit of the float32
// statistic; min and max are exact), codes are written by the lane that owns them, and with
// error feedback the same lane subtracts what its code decodes to, in the same pass. QSGD draws
// one Philox block per four elements.
#include <cmath>

#include "kernels/common/elementwise.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/bucket_common.cuh"
#include "kernels/cuda/kernels.h"

namespace gradcomp::kernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;

__host__ __device__ int64_t chunk_count(int64_t n, int64_t chunk) {
  return (n + chunk - 1) / chunk;
}

// Bytes of statistics before the codes: one float per chunk (QSGD's norm, sign's mean), two
// for int8 (min, step).
__host__ __device__ int64_t stats_bytes(QuantizeMethod method, int64_t n, int64_t chunk) {
  return (method == QuantizeMethod::kInt8 ? 8 : 4) * chunk_count(n, chunk);
}

struct FirstChunk {
  Segments<QuantizeSegment> segments;
  GRADCOMP_HOST_DEVICE int64_t operator()(int32_t s) const { return segments[s].first_chunk; }
};

// -- decoding one element (shared by the per-tensor and segmented decoders, and by the
// encoders' error feedback, so every path computes the same float) -------------------------

__device__ __forceinline__ float qsgd_value(const uint8_t* payload, int64_t n, int bits,
                                            int64_t chunk, int64_t i) {
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  const uint32_t sign_bit = 1u << (bits - 1), mask = (1u << bits) - 1u;
  const float* norms = reinterpret_cast<const float*>(payload);
  const uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  const uint32_t code = (codes[i / per_byte] >> ((i % per_byte) * bits)) & mask;
  const float magnitude = norms[i / chunk] * static_cast<float>(code & ~sign_bit) / levels;
  return (code & sign_bit) ? -magnitude : magnitude;
}

__device__ __forceinline__ float sign_value(const uint8_t* payload, int64_t n, int64_t chunk,
                                            int64_t i) {
  const float scale = reinterpret_cast<const float*>(payload)[i / chunk];
  const uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  return ((codes[i / 8] >> (i % 8)) & 1u) ? -scale : scale;
}

__device__ __forceinline__ float int8_value(const uint8_t* payload, int64_t n, int64_t chunk,
                                            int64_t i) {
  const float* stats = reinterpret_cast<const float*>(payload);
  const uint8_t* codes = payload + 8 * chunk_count(n, chunk);
  const int64_t c = i / chunk;
  return stats[2 * c] + static_cast<float>(codes[i]) * stats[2 * c + 1];
}

__device__ __forceinline__ float quantized_value(const QuantizeParams& p, const uint8_t* payload,
                                                 int64_t n, int64_t i) {
  switch (p.method) {
    case QuantizeMethod::kQsgd:
      return qsgd_value(payload, n, p.bits, p.chunk, i);
    case QuantizeMethod::kSign:
      return sign_value(payload, n, p.chunk, i);
    case QuantizeMethod::kInt8:
      break;
  }
  return int8_value(payload, n, p.chunk, i);
}

// -- encoding one chunk with one warp ---------------------------------------------------------

struct Chunk {
  int64_t index;  // within its tensor
  int64_t count;  // of its tensor
  int64_t begin;
  int64_t end;
};

__device__ void zero_chunk(const QuantizeParams& p, const Chunk& c, int64_t n, uint8_t* payload,
                           int lane) {
  const int stats = p.method == QuantizeMethod::kInt8 ? 2 : 1;
  if (lane < stats) reinterpret_cast<float*>(payload)[stats * c.index + lane] = 0.0f;
  const int bits = p.method == QuantizeMethod::kQsgd   ? p.bits
                   : p.method == QuantizeMethod::kSign ? 1
                                                       : 8;
  uint8_t* codes = payload + stats_bytes(p.method, n, p.chunk);
  const int64_t first = c.begin * bits / 8, last = (c.end * bits + 7) / 8;
  for (int64_t b = first + lane; b < last; b += kWarp) codes[b] = 0;
}

__device__ void qsgd_chunk(const QuantizeSegment& s, int bits, const Chunk& c, uint8_t* payload,
                           uint64_t step, int lane) {
  const float* x = s.x;
  double squares = 0.0;
  for (int64_t i = c.begin + lane; i < c.end; i += kWarp) {
    squares += static_cast<double>(x[i]) * x[i];
  }
  squares = warp_sum(squares);
  const float norm = isfinite(squares) ? static_cast<float>(sqrt(squares)) : NAN;
  float* norms = reinterpret_cast<float*>(payload);
  if (lane == 0) norms[c.index] = norm;
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  const uint32_t sign_bit = 1u << (bits - 1);
  const bool encode = norm > 0.0f;  // zero chunk or NaN statistic: all-zero codes
  const float to_level = encode ? static_cast<float>(levels) / norm : 0.0f;
  uint8_t* codes = payload + 4 * c.count;
  const int64_t last_byte = (c.end - 1) / per_byte;
  // Each lane takes four consecutive elements (chunks start at multiples of 8): one Philox
  // block gives their four random words.
  for (int64_t g = c.begin + 4 * lane; g < c.end; g += 4 * kWarp) {
    const Philox4 random = philox_block(s.key, step, static_cast<uint64_t>(g) / 4);
    uint32_t packed = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // unrolled: random.v[j] stays in registers
      const int64_t i = g + j;
      if (i >= c.end) break;
      const float v = x[i];
      const uint32_t code = encode ? qsgd_code(v, to_level, levels, sign_bit, random.v[j]) : 0u;
      packed |= code << (j * bits);
      if (s.residual != nullptr) {
        const float magnitude = norm * static_cast<float>(code & ~sign_bit) / levels;
        s.residual[i] = v + -1.0f * ((code & sign_bit) ? -magnitude : magnitude);
      }
    }
    const int64_t first_byte = g / per_byte;
    for (int b = 0; b < bits / 2 && first_byte + b <= last_byte; ++b) {
      codes[first_byte + b] = static_cast<uint8_t>(packed >> (8 * b));
    }
  }
}

__device__ void sign_chunk(const QuantizeSegment& s, const Chunk& c, uint8_t* payload, int lane) {
  const float* x = s.x;
  double total = 0.0;
  for (int64_t i = c.begin + lane; i < c.end; i += kWarp) total += fabsf(x[i]);
  total = warp_sum(total);
  const float mean =
      isfinite(total) ? static_cast<float>(total / static_cast<double>(c.end - c.begin)) : NAN;
  if (lane == 0) reinterpret_cast<float*>(payload)[c.index] = mean;
  uint8_t* codes = payload + 4 * c.count;
  const float feedback = -1.0f * mean;  // the decoder's alpha * mean with alpha = -1
  // Each lane takes whole bytes: eight consecutive elements.
  for (int64_t b = c.begin / 8 + lane; 8 * b < c.end; b += kWarp) {
    uint32_t byte = 0;
    for (int slot = 0; slot < 8 && 8 * b + slot < c.end; ++slot) {
      const int64_t i = 8 * b + slot;
      const float v = x[i];
      const uint32_t bit = float_bits(v) >> 31;
      byte |= bit << slot;
      if (s.residual != nullptr) s.residual[i] = v + (bit ? -feedback : feedback);
    }
    codes[b] = static_cast<uint8_t>(byte);
  }
}

__device__ void int8_chunk(const QuantizeSegment& s, const Chunk& c, uint8_t* payload, int lane) {
  const float* x = s.x;
  float low = x[c.begin], high = x[c.begin];
  bool finite = true;
  for (int64_t i = c.begin + lane; i < c.end; i += kWarp) {
    low = fminf(low, x[i]);
    high = fmaxf(high, x[i]);
    finite = finite && isfinite(x[i]);
  }
  low = warp_min(low);
  high = warp_max(high);
  finite = __all_sync(0xffffffffu, finite) != 0;
  const float step = finite ? (high - low) / 255.0f : NAN;
  if (!finite) low = NAN;
  float* stats = reinterpret_cast<float*>(payload);
  if (lane == 0) {
    stats[2 * c.index] = low;
    stats[2 * c.index + 1] = step;
  }
  uint8_t* codes = payload + 8 * c.count;
  for (int64_t i = c.begin + lane; i < c.end; i += kWarp) {
    const float v = x[i];
    const uint8_t code = step > 0.0f ? int8_code(v, low, step) : 0;
    codes[i] = code;
    if (s.residual != nullptr) s.residual[i] = v + -1.0f * (low + static_cast<float>(code) * step);
  }
}

__global__ void quantize_encode_kernel(QuantizeParams p, Segments<QuantizeSegment> segments,
                                       int64_t total_chunks, uint8_t* channel, uint64_t step,
                                       const uint32_t* nonfinite) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t global =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + static_cast<int64_t>(threadIdx.x / kWarp);
  if (global >= total_chunks) return;  // whole warps leave together
  const int32_t index = find_segment(segments.count, global, FirstChunk{segments});
  const QuantizeSegment s = segments[index];
  Chunk c;
  c.index = global - s.first_chunk;
  c.count = chunk_count(s.n, p.chunk);
  c.begin = c.index * p.chunk;
  c.end = c.begin + p.chunk < s.n ? c.begin + p.chunk : s.n;
  uint8_t* payload = channel + s.payload;
  if (nonfinite != nullptr && *nonfinite != 0) return zero_chunk(p, c, s.n, payload, lane);
  switch (p.method) {
    case QuantizeMethod::kQsgd:
      return qsgd_chunk(s, p.bits, c, payload, step, lane);
    case QuantizeMethod::kSign:
      return sign_chunk(s, c, payload, lane);
    case QuantizeMethod::kInt8:
      return int8_chunk(s, c, payload, lane);
  }
}

template <ElementType T>
__global__ void quantize_decode_kernel(QuantizeParams p, Segments<QuantizeSegment> segments,
                                       Tiles tiles, const uint8_t* channel, int64_t rank_stride,
                                       int32_t world, float inverse_world, FlagSlots flags,
                                       void* bucket) {
  const bool bad = block_flagged(flags);
  const Tile tile = tiles[blockIdx.x];
  const QuantizeSegment s = segments[tile.segment];
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    // Zero, plus every rank's value in rank order, times 1 / world: the entry-by-entry decode.
    float sum = 0.0f;
    for (int32_t r = 0; r < world; ++r) {
      sum += 1.0f * quantized_value(p, channel + r * rank_stride + s.payload, s.n, e);
    }
    store_from_float<T>(bucket, s.bucket + e, bad ? NAN : sum * inverse_world);
  }
}

__global__ void quantize_decode_add_kernel(QuantizeParams p, const uint8_t* payload, int64_t n,
                                           float* out, float alpha) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += alpha * quantized_value(p, payload, n, i);
  }
}

// -- casts ------------------------------------------------------------------------------------

__device__ __forceinline__ uint16_t cast_bits(bool half, float v) {
  return half ? float_to_half(v) : float_to_bfloat16(v);
}

__device__ __forceinline__ float cast_value(bool half, uint16_t bits) {
  return half ? half_to_float(bits) : bfloat16_to_float(bits);
}

__global__ void cast_encode_segments_kernel(Segments<CastSegment> segments, Tiles tiles, bool half,
                                            float scale, float feedback_alpha, uint16_t* channel,
                                            const uint32_t* nonfinite) {
  const Tile tile = tiles[blockIdx.x];
  const CastSegment s = segments[tile.segment];
  const bool bad = *nonfinite != 0;
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    if (bad) {
      channel[s.channel + e] = 0;
      continue;
    }
    const float x = s.x[e];
    const uint16_t bits = cast_bits(half, x * scale);
    channel[s.channel + e] = bits;
    if (s.residual != nullptr) s.residual[e] = x + feedback_alpha * cast_value(half, bits);
  }
}

template <ElementType T>
__global__ void cast_decode_segments_kernel(const uint16_t* channel, Segments<CastSegment> segments,
                                            Tiles tiles, bool half, FlagSlots flags, void* bucket) {
  const bool bad = block_flagged(flags);
  const Tile tile = tiles[blockIdx.x];
  const CastSegment s = segments[tile.segment];
#pragma unroll 4
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    const int64_t e = tile.begin + j;
    const float value = 0.0f + 1.0f * cast_value(half, channel[s.channel + e]);
    store_from_float<T>(bucket, s.bucket + e, bad ? NAN : value);
  }
}

template <bool kHalf>
__global__ void cast_encode_kernel(const float* x, int64_t n, float scale, uint16_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = cast_bits(kHalf, x[i] * scale);
  }
}

template <bool kHalf>
__global__ void cast_decode_kernel(const uint16_t* in, int64_t n, float* out, float alpha) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += alpha * cast_value(kHalf, in[i]);
  }
}

unsigned chunk_blocks(int64_t chunks) {
  return static_cast<unsigned>((chunks + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

cudaError_t encode_one(QuantizeParams p, const float* x, int64_t n, uint64_t key, uint64_t step,
                       uint8_t* payload, cudaStream_t stream) {
  if (n < 1) return cudaSuccess;
  QuantizeSegment s{x, nullptr, n, 0, 0, key, 0};
  const int64_t chunks = chunk_count(n, p.chunk);
  quantize_encode_kernel<<<chunk_blocks(chunks), kThreads, 0, stream>>>(
      p, Segments<QuantizeSegment>{nullptr, s, 1}, chunks, payload, step, nullptr);
  return cudaGetLastError();
}

cudaError_t decode_one(QuantizeParams p, const uint8_t* payload, int64_t n, float* out, float alpha,
                       cudaStream_t stream) {
  if (n < 1) return cudaSuccess;
  quantize_decode_add_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, payload, n, out, alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key,
                        uint64_t step, uint8_t* payload, cudaStream_t stream) {
  return encode_one({QuantizeMethod::kQsgd, bits, chunk}, x, n, key, step, payload, stream);
}

cudaError_t qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  return decode_one({QuantizeMethod::kQsgd, bits, chunk}, payload, n, out, alpha, stream);
}

cudaError_t sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream) {
  return encode_one({QuantizeMethod::kSign, 1, chunk}, x, n, 0, 0, payload, stream);
}

cudaError_t sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  return decode_one({QuantizeMethod::kSign, 1, chunk}, payload, n, out, alpha, stream);
}

cudaError_t int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream) {
  return encode_one({QuantizeMethod::kInt8, 8, chunk}, x, n, 0, 0, payload, stream);
}

cudaError_t int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  return decode_one({QuantizeMethod::kInt8, 8, chunk}, payload, n, out, alpha, stream);
}

cudaError_t fp16_encode(const float* x, int64_t n, float scale, uint16_t* out,
                        cudaStream_t stream) {
  cast_encode_kernel<true><<<grid_for(n), kThreads, 0, stream>>>(x, n, scale, out);
  return cudaGetLastError();
}

cudaError_t bf16_encode(const float* x, int64_t n, float scale, uint16_t* out,
                        cudaStream_t stream) {
  cast_encode_kernel<false><<<grid_for(n), kThreads, 0, stream>>>(x, n, scale, out);
  return cudaGetLastError();
}

cudaError_t fp16_decode_add(const uint16_t* in, int64_t n, float* out, float alpha,
                            cudaStream_t stream) {
  cast_decode_kernel<true><<<grid_for(n), kThreads, 0, stream>>>(in, n, out, alpha);
  return cudaGetLastError();
}

cudaError_t bf16_decode_add(const uint16_t* in, int64_t n, float* out, float alpha,
                            cudaStream_t stream) {
  cast_decode_kernel<false><<<grid_for(n), kThreads, 0, stream>>>(in, n, out, alpha);
  return cudaGetLastError();
}

cudaError_t quantize_encode_segments(QuantizeParams params, Segments<QuantizeSegment> segments,
                                     int64_t total_chunks, uint8_t* channel, uint64_t step,
                                     const uint32_t* nonfinite, cudaStream_t stream) {
  if (total_chunks == 0) return cudaSuccess;
  quantize_encode_kernel<<<chunk_blocks(total_chunks), kThreads, 0, stream>>>(
      params, segments, total_chunks, channel, step, nonfinite);
  return cudaGetLastError();
}

cudaError_t quantize_decode_segments(QuantizeParams params, Segments<QuantizeSegment> segments,
                                     Tiles tiles, const uint8_t* channel, int64_t rank_stride,
                                     int32_t world, float inverse_world, FlagSlots flags,
                                     void* bucket, ElementType type, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(
      type, T,
      quantize_decode_kernel<T><<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
          params, segments, tiles, channel, rank_stride, world, inverse_world, flags, bucket));
  return cudaGetLastError();
}

cudaError_t cast_encode_segments(Segments<CastSegment> segments, Tiles tiles, bool half,
                                 float scale, float feedback_alpha, uint16_t* channel,
                                 const uint32_t* nonfinite, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  cast_encode_segments_kernel<<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
      segments, tiles, half, scale, feedback_alpha, channel, nonfinite);
  return cudaGetLastError();
}

cudaError_t cast_decode_segments(const uint16_t* channel, Segments<CastSegment> segments,
                                 Tiles tiles, bool half, FlagSlots flags, void* bucket,
                                 ElementType type, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  GRADCOMP_DISPATCH_GRADIENT_TYPE(type, T,
                                  cast_decode_segments_kernel<T>
                                  <<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
                                      channel, segments, tiles, half, flags, bucket));
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
