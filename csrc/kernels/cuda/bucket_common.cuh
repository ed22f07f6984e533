// Device helpers shared by the segmented kernels (bucket.h): loading and storing bucket elements
// of any gradient type as float, reading every rank's non-finite flag, warp reductions, and
// the host-side dispatch on the bucket's element type.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/bucket.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {

template <ElementType T>
__device__ __forceinline__ float load_as_float(const void* base, int64_t i) {
  if constexpr (T == ElementType::kFloat32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (T == ElementType::kBFloat16) {
    return bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
  } else if constexpr (T == ElementType::kFloat16) {
    return half_to_float(static_cast<const uint16_t*>(base)[i]);
  } else {
    return static_cast<float>(static_cast<const uint8_t*>(base)[i]);
  }
}

// The same rounding as torch's casts (kernels/common/elementwise.h).
template <ElementType T>
__device__ __forceinline__ void store_from_float(void* base, int64_t i, float value) {
  if constexpr (T == ElementType::kFloat32) {
    static_cast<float*>(base)[i] = value;
  } else if constexpr (T == ElementType::kBFloat16) {
    static_cast<uint16_t*>(base)[i] = float_to_bfloat16(value);
  } else if constexpr (T == ElementType::kFloat16) {
    static_cast<uint16_t*>(base)[i] = float_to_half(value);
  } else {
    static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(value);
  }
}

// True when element i is inf or NaN: the exponent bits are all ones.
template <ElementType T>
__device__ __forceinline__ bool not_finite(const void* base, int64_t i) {
  if constexpr (T == ElementType::kFloat32) {
    return (float_bits(static_cast<const float*>(base)[i]) & 0x7f800000u) == 0x7f800000u;
  } else if constexpr (T == ElementType::kBFloat16) {
    return (static_cast<const uint16_t*>(base)[i] & 0x7f80u) == 0x7f80u;
  } else if constexpr (T == ElementType::kFloat16) {
    return (static_cast<const uint16_t*>(base)[i] & 0x7c00u) == 0x7c00u;
  } else {
    return false;
  }
}

__device__ __forceinline__ float slot_value(const void* base, ElementType type, int64_t i) {
  switch (type) {
    case ElementType::kFloat32:
      return load_as_float<ElementType::kFloat32>(base, i);
    case ElementType::kBFloat16:
      return load_as_float<ElementType::kBFloat16>(base, i);
    case ElementType::kFloat16:
      return load_as_float<ElementType::kFloat16>(base, i);
    case ElementType::kByte:
      break;
  }
  return load_as_float<ElementType::kByte>(base, i);
}

// Whether any rank flagged a non-finite bucket (a NaN sum counts as flagged, as x != 0 does).
__device__ __forceinline__ bool any_flag(const FlagSlots& flags) {
  bool flagged = false;
  for (int32_t r = 0; r < flags.count; ++r) {
    const float value = slot_value(flags.base, flags.type, r * flags.stride);
    flagged = flagged || !(value == 0.0f);
  }
  return flagged;
}

// The block's view of the received flags: read once by thread 0, shared.
__device__ __forceinline__ bool block_flagged(const FlagSlots& flags) {
  __shared__ int shared_flag;
  if (threadIdx.x == 0) shared_flag = any_flag(flags) ? 1 : 0;
  __syncthreads();
  return shared_flag != 0;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

__device__ __forceinline__ float warp_min(float value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fminf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Runs the statements with the constant `T` set to the bucket's element type (a gradient type;
// anything else returns cudaErrorInvalidValue from the calling function).
#define GRADCOMP_DISPATCH_GRADIENT_TYPE(type, T, ...)   \
  switch (type) {                                       \
    case ElementType::kFloat32: {                       \
      constexpr ElementType T = ElementType::kFloat32;  \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    case ElementType::kBFloat16: {                      \
      constexpr ElementType T = ElementType::kBFloat16; \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    case ElementType::kFloat16: {                       \
      constexpr ElementType T = ElementType::kFloat16;  \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    default:                                            \
      return cudaErrorInvalidValue;                     \
  }

}  // namespace gradcomp::kernels::cuda
