// Chunked quantizers and casts on CUDA (layouts and semantics: kernels/cpu/quantize.h).
#include <cmath>

#include "kernels/common/elementwise.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

__device__ int64_t chunk_end(int64_t c, int64_t chunk, int64_t n) {
  return (c + 1) * chunk < n ? (c + 1) * chunk : n;
}

__host__ __device__ int64_t chunk_count(int64_t n, int64_t chunk) {
  return (n + chunk - 1) / chunk;
}

// One block per chunk: the L2 norm, then one thread per code byte.
__global__ void qsgd_encode_kernel(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key,
                                   uint64_t step, uint8_t* payload) {
  const int64_t c = blockIdx.x;
  const int64_t begin = c * chunk, end = chunk_end(c, chunk, n);
  double squares = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    squares += static_cast<double>(x[i]) * x[i];
  }
  squares = block_sum(squares);
  const float norm = isfinite(squares) ? static_cast<float>(sqrt(squares)) : NAN;
  if (threadIdx.x == 0) reinterpret_cast<float*>(payload)[c] = norm;
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  const uint32_t sign_bit = 1u << (bits - 1);
  const bool encode = norm > 0.0f;  // zero chunk or NaN statistic: all-zero codes
  const float to_level = encode ? static_cast<float>(levels) / norm : 0.0f;
  uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  const int64_t first_byte = begin / per_byte, bytes = (end - begin + per_byte - 1) / per_byte;
  for (int64_t b = threadIdx.x; b < bytes; b += blockDim.x) {
    uint32_t byte = 0;
    for (int slot = 0; slot < per_byte; ++slot) {
      const int64_t i = begin + b * per_byte + slot;
      if (!encode || i >= end) break;
      const uint32_t word = philox_block(key, step, static_cast<uint64_t>(i) / 4).v[i % 4];
      byte |= qsgd_code(x[i], to_level, levels, sign_bit, word) << (slot * bits);
    }
    codes[first_byte + b] = static_cast<uint8_t>(byte);
  }
}

__global__ void qsgd_decode_kernel(const uint8_t* payload, int64_t n, int bits, int64_t chunk,
                                   float* out, float alpha) {
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  const uint32_t sign_bit = 1u << (bits - 1), mask = (1u << bits) - 1u;
  const float* norms = reinterpret_cast<const float*>(payload);
  const uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t code = (codes[i / per_byte] >> ((i % per_byte) * bits)) & mask;
    const float magnitude = norms[i / chunk] * static_cast<float>(code & ~sign_bit) / levels;
    out[i] += alpha * ((code & sign_bit) ? -magnitude : magnitude);
  }
}

__global__ void sign_encode_kernel(const float* x, int64_t n, int64_t chunk, uint8_t* payload) {
  const int64_t c = blockIdx.x;
  const int64_t begin = c * chunk, end = chunk_end(c, chunk, n);
  double total = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) total += fabsf(x[i]);
  total = block_sum(total);
  if (threadIdx.x == 0) {
    reinterpret_cast<float*>(payload)[c] =
        isfinite(total) ? static_cast<float>(total / static_cast<double>(end - begin)) : NAN;
  }
  uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  for (int64_t b = threadIdx.x; b < (end - begin + 7) / 8; b += blockDim.x) {
    uint32_t byte = 0;
    for (int slot = 0; slot < 8 && begin + 8 * b + slot < end; ++slot) {
      byte |= (float_bits(x[begin + 8 * b + slot]) >> 31) << slot;
    }
    codes[begin / 8 + b] = static_cast<uint8_t>(byte);
  }
}

__global__ void sign_decode_kernel(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                                   float alpha) {
  const float* scales = reinterpret_cast<const float*>(payload);
  const uint8_t* codes = payload + 4 * chunk_count(n, chunk);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float scale = alpha * scales[i / chunk];
    out[i] += ((codes[i / 8] >> (i % 8)) & 1u) ? -scale : scale;
  }
}

struct Min {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__global__ void int8_encode_kernel(const float* x, int64_t n, int64_t chunk, uint8_t* payload) {
  const int64_t c = blockIdx.x;
  const int64_t begin = c * chunk, end = chunk_end(c, chunk, n);
  float low = x[begin], high = x[begin];
  int finite = 1;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    low = fminf(low, x[i]);
    high = fmaxf(high, x[i]);
    finite &= isfinite(x[i]) ? 1 : 0;
  }
  low = block_reduce(low, Min{});
  high = block_reduce(high, Max{});
  finite = __syncthreads_and(finite);
  const float step = finite ? (high - low) / 255.0f : NAN;
  if (!finite) low = NAN;
  if (threadIdx.x == 0) {
    reinterpret_cast<float*>(payload)[2 * c] = low;
    reinterpret_cast<float*>(payload)[2 * c + 1] = step;
  }
  uint8_t* codes = payload + 8 * chunk_count(n, chunk);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    codes[i] = step > 0.0f ? int8_code(x[i], low, step) : 0;
  }
}

__global__ void int8_decode_kernel(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                                   float alpha) {
  const float* stats = reinterpret_cast<const float*>(payload);
  const uint8_t* codes = payload + 8 * chunk_count(n, chunk);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i / chunk;
    out[i] += alpha * (stats[2 * c] + static_cast<float>(codes[i]) * stats[2 * c + 1]);
  }
}

template <bool kHalf>
__global__ void cast_encode_kernel(const float* x, int64_t n, float scale, uint16_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = kHalf ? float_to_half(x[i] * scale) : float_to_bfloat16(x[i] * scale);
  }
}

template <bool kHalf>
__global__ void cast_decode_kernel(const uint16_t* in, int64_t n, float* out, float alpha) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += alpha * (kHalf ? half_to_float(in[i]) : bfloat16_to_float(in[i]));
  }
}

unsigned chunk_grid(int64_t n, int64_t chunk) {
  return static_cast<unsigned>(chunk_count(n, chunk));
}

}  // namespace

cudaError_t qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key,
                        uint64_t step, uint8_t* payload, cudaStream_t stream) {
  qsgd_encode_kernel<<<chunk_grid(n, chunk), kThreads, 0, stream>>>(x, n, bits, chunk, key, step,
                                                                    payload);
  return cudaGetLastError();
}

cudaError_t qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  qsgd_decode_kernel<<<grid_for(n), kThreads, 0, stream>>>(payload, n, bits, chunk, out, alpha);
  return cudaGetLastError();
}

cudaError_t sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream) {
  sign_encode_kernel<<<chunk_grid(n, chunk), kThreads, 0, stream>>>(x, n, chunk, payload);
  return cudaGetLastError();
}

cudaError_t sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  sign_decode_kernel<<<grid_for(n), kThreads, 0, stream>>>(payload, n, chunk, out, alpha);
  return cudaGetLastError();
}

cudaError_t int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream) {
  int8_encode_kernel<<<chunk_grid(n, chunk), kThreads, 0, stream>>>(x, n, chunk, payload);
  return cudaGetLastError();
}

cudaError_t int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream) {
  int8_decode_kernel<<<grid_for(n), kThreads, 0, stream>>>(payload, n, chunk, out, alpha);
  return cudaGetLastError();
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

}  // namespace gradcomp::kernels::cuda
