// Per-element encodings shared by the CPU and CUDA kernels, so both give the same bits by
// construction: IEEE casts to fp16 / bf16 and back, the magnitude key of the Top-K family,
// and the codes of QSGD and int8. Header-only, host and device, no torch.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common/philox.h"

namespace gradcomp::kernels {

GRADCOMP_HOST_DEVICE uint32_t float_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

GRADCOMP_HOST_DEVICE float bits_float(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// |x| as the IEEE-754 bits with the sign cleared: orders like |x|, -0 == +0, inf above every
// finite value, NaN above inf.
GRADCOMP_HOST_DEVICE uint32_t magnitude_bits(float v) { return float_bits(v) & 0x7fffffffu; }

// Round to nearest even, overflow to inf, NaN to the canonical quiet NaN with its sign: the
// same bits as c10::Half (F. Giesen's float_to_half_fast3_rtne). Needs IEEE float addition
// with subnormals (no flush-to-zero).
GRADCOMP_HOST_DEVICE uint16_t float_to_half(float value) {
  uint32_t x = float_bits(value);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint32_t out;
  if (x >= (143u << 23)) {  // |x| >= 65536 (or inf, NaN): beyond any rounding to 65504
    out = x > (255u << 23) ? 0x7e00u : 0x7c00u;
  } else if (x < (113u << 23)) {  // below 2^-14: a half subnormal; float addition rounds it
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    out = float_bits(bits_float(x) + bits_float(magic)) - magic;
  } else {
    const uint32_t odd = (x >> 13) & 1u;
    x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    out = x >> 13;  // a carry out of the mantissa rounds 65520.. up to inf, as it should
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

GRADCOMP_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return bits_float(float_bits(magnitude) | sign);
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// c10::BFloat16's round_to_nearest_even, NaN included (always 0x7fc0).
GRADCOMP_HOST_DEVICE uint16_t float_to_bfloat16(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  return static_cast<uint16_t>((bits + ((bits >> 16) & 1u) + 0x7fffu) >> 16);
}

GRADCOMP_HOST_DEVICE float bfloat16_to_float(uint16_t h) {
  return bits_float(static_cast<uint32_t>(h) << 16);
}

// QSGD's code of x: the sign bit (bits - 1) for negative x (-0 included) and a level in
// [0, levels]: floor(r) + (u < r - floor(r)) with r = |x| * to_level (to_level = levels / norm).
GRADCOMP_HOST_DEVICE uint32_t qsgd_code(float x, float to_level, int levels, uint32_t sign_bit,
                                        uint32_t random_word) {
  const float magnitude = bits_float(float_bits(x) & 0x7fffffffu);
  float r = magnitude * to_level;
  r = r < static_cast<float>(levels) ? r : static_cast<float>(levels);
  // r is in [0, levels]: truncation is floor (std::floor is a call without SSE4.1).
  const float floor_r = static_cast<float>(static_cast<int32_t>(r));
  const uint32_t up = uniform_float(random_word) < r - floor_r ? 1u : 0u;
  uint32_t level = static_cast<uint32_t>(floor_r) + up;
  level = level < static_cast<uint32_t>(levels) ? level : static_cast<uint32_t>(levels);
  return ((float_bits(x) >> 31) ? sign_bit : 0u) | level;
}

// int8's code of x in a chunk with minimum `low` and step > 0: round-half-even((x - low) /
// step) in [0, 255]. Adding and subtracting 1.5 * 2^23 rounds half to even in the default
// rounding mode, and vectorizes (nearbyint is a library call without SSE4.1).
GRADCOMP_HOST_DEVICE uint8_t int8_code(float x, float low, float step) {
  float scaled = (x - low) / step;
  // NaN (inf / inf, when max - min overflows float) goes to 255 rather than into an undefined
  // float-to-int conversion; it only arises for the chunk's maximum.
  scaled = scaled <= 255.0f ? scaled : 255.0f;
  scaled = scaled >= 0.0f ? scaled : 0.0f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
  return static_cast<uint8_t>((scaled + kRoundMagic) - kRoundMagic);
}

}  // namespace gradcomp::kernels
