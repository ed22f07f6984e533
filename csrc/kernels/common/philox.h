// Philox-4x32-10 (Salmon et al., SC'11): a counter-based RNG, so any element's random numbers
// can be computed directly from (key, counter) on any thread, rank or device, with no state to
// carry and no effect on torch's global generator. Header-only and usable from CUDA code.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GRADCOMP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRADCOMP_HOST_DEVICE inline
#endif

namespace gradcomp::kernels {

struct Philox4 {
  uint32_t v[4];
};

GRADCOMP_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Four independent 32-bit random words for the 128-bit counter (c0..c3) under a 64-bit key.
GRADCOMP_HOST_DEVICE Philox4 philox4x32(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2,
                                        uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = c3;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, x0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, x2, hi1, lo1);
    const uint32_t y0 = hi1 ^ x1 ^ k0, y1 = lo1, y2 = hi0 ^ x3 ^ k1, y3 = lo0;
    x0 = y0;
    x1 = y1;
    x2 = y2;
    x3 = y3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{x0, x1, x2, x3}};
}

// The stream of one (key, step): word i of the stream is word i % 4 of
// philox4x32(key, i / 4 low, i / 4 high, step low, step high).
GRADCOMP_HOST_DEVICE Philox4 philox_block(uint64_t key, uint64_t step, uint64_t block) {
  return philox4x32(key, static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                    static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32));
}

// A uniform float in [0, 1) from the top 24 bits of a random word (exactly representable).
GRADCOMP_HOST_DEVICE float uniform_float(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// A uniform integer in [0, range) for range >= 1 (multiply-shift; bias below 2^-32 * range).
GRADCOMP_HOST_DEVICE uint32_t uniform_below(uint32_t word, uint32_t range) {
  return static_cast<uint32_t>((static_cast<uint64_t>(word) * range) >> 32);
}

// Mixes a seed and a per-tensor key into one Philox key (splitmix64 finalizer), so that
// nearby seeds and keys give unrelated streams.
GRADCOMP_HOST_DEVICE uint64_t philox_key(uint64_t seed, uint64_t tensor_key) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + tensor_key;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace gradcomp::kernels
