#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/common/elementwise.h"
#include "kernels/common/philox.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Speed notes. The library is built -O3 for baseline x86-64 (SSE2). GCC 12 leaves several of
// these loops scalar: float min / max reductions, float clamps followed by arithmetic (it
// branches around the arithmetic, which -ftrapping-math then forbids if-converting), Philox's
// 32x32->64-bit multiplies, sign-bit gathers. Those loops use GCC / Clang vector extensions
// or, under __SSE2__, a few intrinsics, each with a plain C++ fallback computing the same bits.
// Element-wise helpers that re-state a function of elementwise.h (shared with the CUDA kernels)
// in a vectorizable form are tested against independent references.

namespace gradcomp::kernels::cpu {
namespace {

using kernels::bfloat16_to_float;
using kernels::bits_float;
using kernels::float_bits;
using kernels::float_to_bfloat16;

// Below this many elements per task the threading overhead outweighs the work.
constexpr int64_t kMinElementsPerTask = 1 << 15;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
// Chunk sums are kept in this many double lanes (element i goes to lane i % kLanes), combined
// in lane order: independent add chains, and a statistic that never depends on the runner.
constexpr int kLanes = 8;
// Philox blocks computed side by side (16 blocks = 64 words).
constexpr int kPhiloxBlocks = 16;
constexpr int64_t kPhiloxWords = 4 * kPhiloxBlocks;
// QSGD codes a chunk in pieces of this many elements (a multiple of kPhiloxWords), so a
// piece's random words and codes stay in L1.
constexpr int64_t kQsgdPiece = 1024;

typedef float Float4 __attribute__((vector_size(16)));
typedef int32_t Int4 __attribute__((vector_size(16)));

float load_float(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
void store_float(uint8_t* p, float v) { std::memcpy(p, &v, sizeof(v)); }

// Runs chunk_fn(chunk index, first element, end element) for every quantization chunk, in tasks
// of whole chunks, so tasks never share a byte of packed codes.
template <typename ChunkFn>
void for_each_chunk(int64_t n, int64_t chunk, const TaskRunner& runner, const ChunkFn& chunk_fn) {
  const int64_t chunks = num_chunks(n, chunk);
  const Chunking tasks(chunks, std::max<int64_t>(1, kMinElementsPerTask / chunk), runner);
  runner.run(tasks.size(), [&](int64_t t) {
    for (int64_t c = tasks.begin(t); c < tasks.end(t); ++c) {
      chunk_fn(c, c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

// Element-wise work, split in ranges.
template <typename RangeFn>
void for_each_range(int64_t n, const TaskRunner& runner, const RangeFn& range_fn) {
  const Chunking tasks(n, kMinElementsPerTask, runner);
  runner.run(tasks.size(), [&](int64_t t) { range_fn(tasks.begin(t), tasks.end(t)); });
}

double combine(const double (&lanes)[kLanes]) {
  double total = 0.0;
  for (const double v : lanes) total += v;
  return total;
}

// -- chunk statistics -----------------------------------------------------------------------------
// Sums are in double: squares of floats are exact there, the sum's rounding error is far below a
// float32 ulp, and no finite input can overflow it; an inf or NaN input makes it inf or NaN.

#if defined(__SSE2__)
// Lanes 2k and 2k + 1 of the scalar version live in acc[k].
void load_lanes(const double (&lanes)[kLanes], __m128d (&acc)[4]) {
  for (int k = 0; k < 4; ++k) acc[k] = _mm_loadu_pd(lanes + 2 * k);
}
void store_lanes(const __m128d (&acc)[4], double (&lanes)[kLanes]) {
  for (int k = 0; k < 4; ++k) _mm_storeu_pd(lanes + 2 * k, acc[k]);
}
#endif

// Sum of xs[i]^2 over [0, count).
double sum_of_squares(const float* xs, int64_t count) {
  double lanes[kLanes] = {};
  int64_t i = 0;
#if defined(__SSE2__)
  __m128d acc[4];
  load_lanes(lanes, acc);
  for (; i + 8 <= count; i += 8) {
    const __m128 a = _mm_loadu_ps(xs + i), b = _mm_loadu_ps(xs + i + 4);
    const __m128d d[4] = {_mm_cvtps_pd(a), _mm_cvtps_pd(_mm_movehl_ps(a, a)), _mm_cvtps_pd(b),
                          _mm_cvtps_pd(_mm_movehl_ps(b, b))};
    for (int k = 0; k < 4; ++k) acc[k] = _mm_add_pd(acc[k], _mm_mul_pd(d[k], d[k]));
  }
  store_lanes(acc, lanes);
#endif
  for (; i < count; ++i) lanes[i % kLanes] += static_cast<double>(xs[i]) * xs[i];
  return combine(lanes);
}

// Writes the sign bits of xs[0, count) (bit i % 8 of byte i / 8, set for a set sign bit) to
// out[0, ceil(count / 8)) and returns the sum of |xs[i]|, in one pass.
double sign_bits_and_abs_sum(const float* xs, int64_t count, uint8_t* out) {
  double lanes[kLanes] = {};
  int64_t i = 0;
#if defined(__SSE2__)
  __m128d acc[4];
  load_lanes(lanes, acc);
  const __m128 sign = _mm_set1_ps(-0.0f);
  for (; i + 8 <= count; i += 8) {
    const __m128 a = _mm_loadu_ps(xs + i), b = _mm_loadu_ps(xs + i + 4);
    out[i / 8] = static_cast<uint8_t>(_mm_movemask_ps(a) | (_mm_movemask_ps(b) << 4));
    const __m128 abs_a = _mm_andnot_ps(sign, a), abs_b = _mm_andnot_ps(sign, b);
    acc[0] = _mm_add_pd(acc[0], _mm_cvtps_pd(abs_a));
    acc[1] = _mm_add_pd(acc[1], _mm_cvtps_pd(_mm_movehl_ps(abs_a, abs_a)));
    acc[2] = _mm_add_pd(acc[2], _mm_cvtps_pd(abs_b));
    acc[3] = _mm_add_pd(acc[3], _mm_cvtps_pd(_mm_movehl_ps(abs_b, abs_b)));
  }
  store_lanes(acc, lanes);
#endif
  for (; i < count; i += 8) {
    uint32_t byte = 0;
    for (int l = 0; l < 8 && i + l < count; ++l) {
      lanes[l] += std::fabs(xs[i + l]);
      byte |= (float_bits(xs[i + l]) >> 31) << l;
    }
    out[i / 8] = static_cast<uint8_t>(byte);
  }
  return combine(lanes);
}

// The min and max of xs[0, count), count >= 1; false when some element is inf or NaN. Float
// min / max reductions are not vectorized by the compiler itself (it may not reorder them
// around NaN and -0), hence the explicit vectors.
bool finite_min_max(const float* xs, int64_t count, float& low, float& high) {
  // Broadcast by initializer, not by adding to zero: +0 + -0 would lose the sign of a -0.
  Float4 lo = {xs[0], xs[0], xs[0], xs[0]}, hi = lo;
  Int4 nan = Int4{};
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    Float4 v;
    std::memcpy(&v, xs + i, sizeof(v));
    lo = v < lo ? v : lo;  // a NaN compares false and leaves lo and hi alone
    hi = hi < v ? v : hi;
    nan |= v != v;
  }
  low = lo[0];
  high = hi[0];
  bool any_nan = (nan[0] | nan[1] | nan[2] | nan[3]) != 0;
  for (int l = 1; l < 4; ++l) {
    low = lo[l] < low ? lo[l] : low;
    high = high < hi[l] ? hi[l] : high;
  }
  for (; i < count; ++i) {
    low = xs[i] < low ? xs[i] : low;
    high = high < xs[i] ? xs[i] : high;
    any_nan = any_nan || std::isnan(xs[i]);
  }
  return !any_nan && low != -kInf && high != kInf;
}

// -- Philox ---------------------------------------------------------------------------------------

// words[j] = word (first + j) of the stream (key, step) of philox.h, for j in [0, count), with
// count a multiple of kPhiloxWords and first a multiple of 4. It dominates QSGD's encode.
#if defined(__SSE2__)
// Each 64-bit lane holds one block's 32-bit word in its low half (the high half is don't-care):
// pmuludq reads exactly the low halves and leaves hi:lo of the product in the lane.
void philox_words(uint64_t key, uint64_t step, int64_t first, int64_t count, uint32_t* words) {
  constexpr int kVectors = kPhiloxBlocks / 2;
  const __m128i mul0 = _mm_set1_epi64x(0xD2511F53u), mul1 = _mm_set1_epi64x(0xCD9E8D57u);
  const __m128i step_lo = _mm_set1_epi64x(static_cast<uint32_t>(step));
  const __m128i step_hi = _mm_set1_epi64x(static_cast<uint32_t>(step >> 32));
  for (int64_t done = 0; done < count; done += kPhiloxWords) {
    const uint64_t block0 = static_cast<uint64_t>(first + done) / 4;
    __m128i x0[kVectors], x1[kVectors], x2[kVectors], x3[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      const uint64_t a = block0 + 2 * v, b = a + 1;
      x0[v] = _mm_set_epi64x(static_cast<uint32_t>(b), static_cast<uint32_t>(a));
      x1[v] = _mm_set_epi64x(static_cast<int64_t>(b >> 32), static_cast<int64_t>(a >> 32));
      x2[v] = step_lo;
      x3[v] = step_hi;
    }
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m128i key0 = _mm_set1_epi64x(k0), key1 = _mm_set1_epi64x(k1);
      for (int v = 0; v < kVectors; ++v) {
        const __m128i p0 = _mm_mul_epu32(x0[v], mul0), p1 = _mm_mul_epu32(x2[v], mul1);
        x0[v] = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi64(p1, 32), x1[v]), key0);
        x2[v] = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi64(p0, 32), x3[v]), key1);
        x1[v] = p1;
        x3[v] = p0;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int v = 0; v < kVectors; ++v) {
      // Blocks a, b in the two lanes of each word -> a0 a1 a2 a3 b0 b1 b2 b3.
      const __m128i a01_b01 = _mm_unpacklo_epi32(x0[v], x1[v]);
      const __m128i a23_b23 = _mm_unpacklo_epi32(x2[v], x3[v]);
      const __m128i c01_d01 = _mm_unpackhi_epi32(x0[v], x1[v]);
      const __m128i c23_d23 = _mm_unpackhi_epi32(x2[v], x3[v]);
      auto* out = reinterpret_cast<__m128i*>(words + done + 8 * v);
      _mm_storeu_si128(out, _mm_unpacklo_epi64(a01_b01, a23_b23));
      _mm_storeu_si128(out + 1, _mm_unpacklo_epi64(c01_d01, c23_d23));
    }
  }
}
#else
// The same lanes in plain C++: 64-bit state whose low half is the word, so each multiply is one
// 32x32->64-bit product that a compiler may map to a widening vector multiply.
void philox_words(uint64_t key, uint64_t step, int64_t first, int64_t count, uint32_t* words) {
  for (int64_t done = 0; done < count; done += kPhiloxWords) {
    const uint64_t block0 = static_cast<uint64_t>(first + done) / 4;
    uint64_t x0[kPhiloxBlocks], x1[kPhiloxBlocks], x2[kPhiloxBlocks], x3[kPhiloxBlocks];
    for (int l = 0; l < kPhiloxBlocks; ++l) {
      x0[l] = static_cast<uint32_t>(block0 + l);
      x1[l] = (block0 + l) >> 32;
      x2[l] = static_cast<uint32_t>(step);
      x3[l] = step >> 32;
    }
    uint64_t k0 = static_cast<uint32_t>(key), k1 = key >> 32;
    for (int round = 0; round < 10; ++round) {
      for (int l = 0; l < kPhiloxBlocks; ++l) {
        const uint64_t p0 = 0xD2511F53ull * (x0[l] & 0xffffffffu);
        const uint64_t p1 = 0xCD9E8D57ull * (x2[l] & 0xffffffffu);
        x0[l] = (p1 >> 32) ^ x1[l] ^ k0;
        x2[l] = (p0 >> 32) ^ x3[l] ^ k1;
        x1[l] = p1;
        x3[l] = p0;
      }
      k0 = static_cast<uint32_t>(k0 + 0x9E3779B9u);
      k1 = static_cast<uint32_t>(k1 + 0xBB67AE85u);
    }
    for (int l = 0; l < kPhiloxBlocks; ++l) {
      uint32_t* out = words + done + 4 * l;
      out[0] = static_cast<uint32_t>(x0[l]);
      out[1] = static_cast<uint32_t>(x1[l]);
      out[2] = static_cast<uint32_t>(x2[l]);
      out[3] = static_cast<uint32_t>(x3[l]);
    }
  }
}
#endif

// -- QSGD -----------------------------------------------------------------------------------------

// qsgd_code of elementwise.h when to_level is finite. Then r = |x| * to_level < levels + 1
// (norm >= |x|; each rounding is relative 2^-24), so clamping the level instead of r gives the
// same code, and the loop has no float clamp for GCC to branch around.
template <int kBits>
inline uint8_t qsgd_code_finite(float x, float to_level, uint32_t random_word) {
  constexpr int32_t kLevels = (1 << (kBits - 1)) - 1;
  const uint32_t bits = float_bits(x);
  const float r = bits_float(bits & 0x7fffffffu) * to_level;
  const int32_t whole = static_cast<int32_t>(r);
  int32_t level = whole + (uniform_float(random_word) < r - static_cast<float>(whole) ? 1 : 0);
  level = level < kLevels ? level : kLevels;
  return static_cast<uint8_t>(((bits >> 31) << (kBits - 1)) | static_cast<uint32_t>(level));
}

// Packs codes[0, bytes * 8 / kBits) into out[0, bytes), little-endian within each byte.
template <int kBits>
void pack_codes(const uint8_t* codes, int64_t bytes, uint8_t* out) {
  if constexpr (kBits == 8) {
    std::memcpy(out, codes, static_cast<size_t>(bytes));
  } else if constexpr (kBits == 4) {
    for (int64_t b = 0; b < bytes; ++b) {
      out[b] = static_cast<uint8_t>(codes[2 * b] | (codes[2 * b + 1] << 4));
    }
  } else {
    static_assert(kBits == 2, "QSGD packs 2, 4 or 8 bits");
    for (int64_t b = 0; b < bytes; ++b) {
      out[b] = static_cast<uint8_t>(codes[4 * b] | (codes[4 * b + 1] << 2) |
                                    (codes[4 * b + 2] << 4) | (codes[4 * b + 3] << 6));
    }
  }
}

template <int kBits>
float qsgd_encode_chunk(const float* xs, int64_t first, int64_t count, uint64_t key, uint64_t step,
                        uint8_t* out) {
  constexpr int kLevels = (1 << (kBits - 1)) - 1;
  constexpr uint32_t kSignBit = 1u << (kBits - 1);
  const double squares = sum_of_squares(xs, count);
  const float norm = std::isfinite(squares) ? static_cast<float>(std::sqrt(squares)) : kNaN;
  if (!(norm > 0.0f)) {  // zero chunk, or NaN statistic: all-zero codes
    std::fill(out, out + (count * kBits + 7) / 8, uint8_t{0});
    return norm;
  }
  const float to_level = static_cast<float>(kLevels) / norm;
  // levels / norm overflows to inf for norms below ~1e-38: then the shared code's clamp of r
  // matters, and that rare chunk takes the scalar path.
  const bool finite_to_level = std::isfinite(to_level);
  alignas(16) uint32_t words[kQsgdPiece];
  alignas(16) uint8_t codes[kQsgdPiece];
  // first (a chunk start) is a multiple of 8 and pieces are multiples of kPhiloxWords: every
  // piece starts on a Philox block boundary.
  for (int64_t p = 0; p < count; p += kQsgdPiece) {
    const int64_t size = std::min(kQsgdPiece, count - p);
    philox_words(key, step, first + p, (size + kPhiloxWords - 1) / kPhiloxWords * kPhiloxWords,
                 words);
    const float* x = xs + p;
    if (finite_to_level) {
      for (int64_t j = 0; j < size; ++j)
        codes[j] = qsgd_code_finite<kBits>(x[j], to_level, words[j]);
    } else {
      for (int64_t j = 0; j < size; ++j) {
        codes[j] = static_cast<uint8_t>(qsgd_code(x[j], to_level, kLevels, kSignBit, words[j]));
      }
    }
    // Zero codes pad a short last byte (only the tensor's last chunk can end mid-byte).
    std::fill(codes + size, codes + (size + 7) / 8 * 8, uint8_t{0});
    pack_codes<kBits>(codes, (size * kBits + 7) / 8, out + p * kBits / 8);
  }
  return norm;
}

template <int kBits>
void qsgd_decode_chunk(float norm, const uint8_t* codes, int64_t count, float* out, float alpha) {
  constexpr int kPerByte = 8 / kBits;
  constexpr int kLevels = (1 << (kBits - 1)) - 1;
  constexpr uint32_t kSignBit = 1u << (kBits - 1), kMask = (1u << kBits) - 1u;
  // Computed per element, not looked up: the CUDA decoder's float expression, and it vectorizes.
  const auto value = [&](uint32_t code) {
    const float magnitude = norm * static_cast<float>(code & ~kSignBit) / kLevels;
    return alpha * ((code & kSignBit) ? -magnitude : magnitude);
  };
  const int64_t whole = count / kPerByte;
  for (int64_t b = 0; b < whole; ++b) {
    const uint32_t byte = codes[b];
    for (int s = 0; s < kPerByte; ++s) {
      out[kPerByte * b + s] += value((byte >> (s * kBits)) & kMask);
    }
  }
  for (int64_t i = whole * kPerByte; i < count; ++i) {
    out[i] +=
        value((static_cast<uint32_t>(codes[i / kPerByte]) >> ((i % kPerByte) * kBits)) & kMask);
  }
}

// -- int8 -----------------------------------------------------------------------------------------

// int8_code of elementwise.h for x >= low, where s = (x - low) / step >= 0 (or NaN). Adding
// 1.5 * 2^23 rounds s half to even into the low mantissa bits, and larger floats have larger
// bits, so clamping those bits equals clamping s first, without a float clamp.
inline uint8_t int8_code_from_low(float x, float low, float step) {
  constexpr float kRoundMagic = 12582912.0f;
  const int32_t q =
      static_cast<int32_t>(float_bits((x - low) / step + kRoundMagic) - float_bits(kRoundMagic));
  return static_cast<uint8_t>(q < 255 ? q : 255);
}

// out[j] = int8_code_from_low(xs[j], low, step) for j in [0, count).
void int8_codes(const float* xs, int64_t count, float low, float step, uint8_t* out) {
  int64_t j = 0;
#if defined(__SSE2__)
  // Codes are >= 0, so the saturating 32->16->8-bit packs clamp them to 255 for free; the
  // compiler's own narrowing (masks and shuffles) cost more than the division.
  constexpr float kRoundMagic = 12582912.0f;
  const __m128 low4 = _mm_set1_ps(low), step4 = _mm_set1_ps(step);
  const __m128 magic = _mm_set1_ps(kRoundMagic);
  const __m128i magic_bits = _mm_set1_epi32(static_cast<int32_t>(float_bits(kRoundMagic)));
  for (; j + 16 <= count; j += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k) {
      const __m128 s = _mm_div_ps(_mm_sub_ps(_mm_loadu_ps(xs + j + 4 * k), low4), step4);
      q[k] = _mm_sub_epi32(_mm_castps_si128(_mm_add_ps(s, magic)), magic_bits);
    }
    const __m128i bytes =
        _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), bytes);
  }
#endif
  for (; j < count; ++j) out[j] = int8_code_from_low(xs[j], low, step);
}

// -- casts ----------------------------------------------------------------------------------------

// float_to_half of elementwise.h with its three cases merged by masks rather than branches (GCC
// would sink the float add into a branch and not vectorize). Returns the half in 32 bits.
inline uint32_t float_to_half_masked(float value) {
  const uint32_t bits = float_bits(value);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t x = bits ^ sign;
  const int32_t sx = static_cast<int32_t>(x);  // x < 2^31: signed compares are exact
  // |x| >= 65536, inf or NaN.
  const uint32_t huge = sx > 0x7f800000 ? 0x7e00u : 0x7c00u;
  // Below 2^-14, a half subnormal: the float add rounds to the half's ulp, to nearest even.
  constexpr uint32_t kMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t tiny = float_bits(bits_float(x) + bits_float(kMagic)) - kMagic;
  // Normal: rebias, and round the 13 dropped bits to nearest even.
  const uint32_t odd = (x >> 13) & 1u;
  const uint32_t normal = (x + (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd) >> 13;
  const uint32_t is_huge = 0u - static_cast<uint32_t>(sx >= (143 << 23));
  const uint32_t is_tiny = 0u - static_cast<uint32_t>(sx < (113 << 23));
  const uint32_t out = (huge & is_huge) | (tiny & is_tiny) | (normal & ~(is_huge | is_tiny));
  return out | (sign >> 16);
}

// half_to_float of elementwise.h, merged by masks for the same reason.
inline float half_to_float_masked(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa
  const uint32_t exponent = shifted & 0x0f800000u;
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const uint32_t small =
      float_bits(static_cast<float>(static_cast<int32_t>(h & 0x3ffu)) * (1.0f / 16777216.0f));
  const uint32_t rebias = exponent == 0x0f800000u ? (255u - 31u) << 23 : (127u - 15u) << 23;
  const uint32_t is_small = 0u - static_cast<uint32_t>(exponent == 0);
  return bits_float((small & is_small) | ((shifted + rebias) & ~is_small) | sign);
}

}  // namespace

// -- QSGD -----------------------------------------------------------------------------------------

void qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key, uint64_t step,
                 uint8_t* payload, const TaskRunner& runner) {
  uint8_t* codes = payload + 4 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    uint8_t* out = codes + begin * bits / 8;
    float norm;
    if (bits == 2) {
      norm = qsgd_encode_chunk<2>(x + begin, begin, end - begin, key, step, out);
    } else if (bits == 4) {
      norm = qsgd_encode_chunk<4>(x + begin, begin, end - begin, key, step, out);
    } else {
      norm = qsgd_encode_chunk<8>(x + begin, begin, end - begin, key, step, out);
    }
    store_float(payload + 4 * c, norm);
  });
}

void qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const uint8_t* codes = payload + 4 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float norm = load_float(payload + 4 * c);
    const uint8_t* in = codes + begin * bits / 8;
    if (bits == 2) {
      qsgd_decode_chunk<2>(norm, in, end - begin, out + begin, alpha);
    } else if (bits == 4) {
      qsgd_decode_chunk<4>(norm, in, end - begin, out + begin, alpha);
    } else {
      qsgd_decode_chunk<8>(norm, in, end - begin, out + begin, alpha);
    }
  });
}

// -- scaled sign ----------------------------------------------------------------------------------

void sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner) {
  uint8_t* codes = payload + 4 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const double total = sign_bits_and_abs_sum(x + begin, end - begin, codes + begin / 8);
    // inf or NaN anywhere makes the sum inf or NaN.
    const float mean =
        std::isfinite(total) ? static_cast<float>(total / static_cast<double>(end - begin)) : kNaN;
    store_float(payload + 4 * c, mean);
  });
}

void sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const uint8_t* codes = payload + 4 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    // +-(alpha * mean), as the CUDA decoder computes it.
    const float scale = alpha * load_float(payload + 4 * c);
    const Float4 pos = {scale, scale, scale, scale}, neg = -pos;
    const uint8_t* in = codes + begin / 8;
    float* o = out + begin;
    const int64_t count = end - begin;
    // Bit l of a code byte selects -scale for element l (the compiler does not vectorize the
    // per-bit select of the scalar form).
    const Int4 low_bits = {1, 2, 4, 8}, high_bits = {16, 32, 64, 128};
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
      const Int4 byte = Int4{} + static_cast<int32_t>(in[i / 8]);
      Float4 a, b;
      std::memcpy(&a, o + i, sizeof(a));
      std::memcpy(&b, o + i + 4, sizeof(b));
      a += (byte & low_bits) != 0 ? neg : pos;
      b += (byte & high_bits) != 0 ? neg : pos;
      std::memcpy(o + i, &a, sizeof(a));
      std::memcpy(o + i + 4, &b, sizeof(b));
    }
    for (; i < count; ++i) o[i] += ((in[i / 8] >> (i % 8)) & 1u) ? neg[0] : pos[0];
  });
}

// -- int8 -----------------------------------------------------------------------------------------

void int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner) {
  uint8_t* codes = payload + 8 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float* xs = x + begin;
    const int64_t count = end - begin;
    float low, high;
    const bool finite = finite_min_max(xs, count, low, high);
    const float step = finite ? (high - low) / 255.0f : kNaN;
    if (!finite) low = kNaN;
    store_float(payload + 8 * c, low);
    store_float(payload + 8 * c + 4, step);
    uint8_t* out = codes + begin;
    if (step > 0.0f) {
      int8_codes(xs, count, low, step, out);
    } else {  // constant chunk, or NaN statistics
      std::fill(out, out + count, uint8_t{0});
    }
  });
}

void int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const uint8_t* codes = payload + 8 * num_chunks(n, chunk);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float low = load_float(payload + 8 * c);
    const float step = load_float(payload + 8 * c + 4);
    for (int64_t i = begin; i < end; ++i) {
      out[i] += alpha * (low + static_cast<float>(codes[i]) * step);
    }
  });
}

// -- casts ----------------------------------------------------------------------------------------

void fp16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    // 32-bit results first, narrowed in a second loop: computing straight into 16-bit lanes,
    // GCC narrows every intermediate mask (SSE2 has no cheap 32->16-bit pack).
    constexpr int64_t kBlock = 64;
    uint32_t wide[kBlock];
    int64_t i = begin;
    for (; i + kBlock <= end; i += kBlock) {
      for (int64_t j = 0; j < kBlock; ++j) wide[j] = float_to_half_masked(x[i + j] * scale);
      for (int64_t j = 0; j < kBlock; ++j) out[i + j] = static_cast<uint16_t>(wide[j]);
    }
    for (; i < end; ++i) out[i] = static_cast<uint16_t>(float_to_half_masked(x[i] * scale));
  });
}

void bf16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = float_to_bfloat16(x[i] * scale);
  });
}

void fp16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] += alpha * half_to_float_masked(in[i]);
  });
}

void bf16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] += alpha * bfloat16_to_float(in[i]);
  });
}

}  // namespace gradcomp::kernels::cpu
