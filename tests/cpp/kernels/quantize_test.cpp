#include "kernels/cpu/quantize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/philox.h"
#include "random_inputs.h"
#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr uint8_t kGuard = 0x5A;
constexpr int64_t kGuardBytes = 16;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}
float from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}
bool same_bits(float a, float b) { return bits_of(a) == bits_of(b); }

using test_inputs::normal;

// Multiples of 1/64 in [-8, 8] (zeros and -0 included): every sum of their squares or
// magnitudes is exact in double, so any summation order gives the same statistics.
std::vector<float> dyadic(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-512, 512);
  std::vector<float> x(n);
  for (auto& v : x) {
    const int k = dist(rng);
    v = k == 0 && (rng() & 1) ? -0.0f : static_cast<float>(k) / 64.0f;
  }
  return x;
}

// -- the codecs, behind one interface -------------------------------------------------------------

enum class Kind { kQsgd, kSign, kInt8 };

struct Codec {
  Kind kind;
  int bits;  // per element: 1 for sign, 8 for int8, 2 / 4 / 8 for QSGD
  int levels() const { return (1 << (bits - 1)) - 1; }
  int stats() const { return kind == Kind::kInt8 ? 2 : 1; }
  std::string name() const {
    switch (kind) {
      case Kind::kQsgd:
        return "qsgd" + std::to_string(bits);
      case Kind::kSign:
        return "sign";
      default:
        return "int8";
    }
  }
};

const Codec kCodecs[] = {
    {Kind::kQsgd, 2}, {Kind::kQsgd, 4}, {Kind::kQsgd, 8}, {Kind::kSign, 1}, {Kind::kInt8, 8}};
constexpr uint64_t kKey = 0x1234567890abcdefull;

int64_t payload_bytes(const Codec& c, int64_t n, int64_t chunk) {
  return chunked_payload_bytes(n, chunk, c.stats(), c.bits);
}

void encode(const Codec& c, const float* x, int64_t n, int64_t chunk, uint64_t step,
            uint8_t* payload, const TaskRunner& runner = serial_runner(), uint64_t key = kKey) {
  switch (c.kind) {
    case Kind::kQsgd:
      qsgd_encode(x, n, c.bits, chunk, key, step, payload, runner);
      break;
    case Kind::kSign:
      sign_encode(x, n, chunk, payload, runner);
      break;
    case Kind::kInt8:
      int8_encode(x, n, chunk, payload, runner);
      break;
  }
}

void decode_add(const Codec& c, const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                float alpha, const TaskRunner& runner = serial_runner()) {
  switch (c.kind) {
    case Kind::kQsgd:
      qsgd_decode_add(payload, n, c.bits, chunk, out, runner, alpha);
      break;
    case Kind::kSign:
      sign_decode_add(payload, n, chunk, out, runner, alpha);
      break;
    case Kind::kInt8:
      int8_decode_add(payload, n, chunk, out, runner, alpha);
      break;
  }
}

// Encodes into a buffer poisoned with `poison` and followed by guard bytes; fails the test if a
// guard byte changed. Returns the payload without the guard.
std::vector<uint8_t> encoded(const Codec& c, const std::vector<float>& x, int64_t chunk,
                             uint64_t step = 0, const TaskRunner& runner = serial_runner(),
                             uint8_t poison = 0xAB, uint64_t key = kKey) {
  const auto n = static_cast<int64_t>(x.size());
  const int64_t bytes = payload_bytes(c, n, chunk);
  std::vector<uint8_t> buffer(bytes + kGuardBytes, poison);
  std::fill(buffer.begin() + bytes, buffer.end(), kGuard);
  encode(c, x.data(), n, chunk, step, buffer.data(), runner, key);
  for (int64_t i = bytes; i < bytes + kGuardBytes; ++i) {
    EXPECT_EQ(buffer[i], kGuard) << c.name() << " wrote past the payload, n=" << n;
  }
  buffer.resize(bytes);
  return buffer;
}

// out + alpha * decoded, with guard elements after out.
std::vector<float> decoded(const Codec& c, const std::vector<uint8_t>& payload, int64_t n,
                           int64_t chunk, std::vector<float> out, float alpha = 1.0f,
                           const TaskRunner& runner = serial_runner()) {
  out.resize(n + 4, 1234.5f);
  decode_add(c, payload.data(), n, chunk, out.data(), alpha, runner);
  for (int64_t i = n; i < n + 4; ++i) EXPECT_EQ(out[i], 1234.5f) << "decoder wrote past n";
  out.resize(n);
  return out;
}

float stat(const std::vector<uint8_t>& payload, int64_t index) {
  float v;
  std::memcpy(&v, payload.data() + 4 * index, sizeof(v));
  return v;
}
std::vector<float> stats_of(const Codec& c, const std::vector<uint8_t>& payload, int64_t n,
                            int64_t chunk) {
  std::vector<float> s(c.stats() * num_chunks(n, chunk));
  for (size_t i = 0; i < s.size(); ++i) s[i] = stat(payload, static_cast<int64_t>(i));
  return s;
}

// -- a scalar reference, straight from the header's description -----------------------------------

// The chunk statistics with sequential double sums.
std::vector<float> reference_stats(const Codec& c, const std::vector<float>& x, int64_t chunk) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> stats;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t end = std::min(n, begin + chunk);
    bool finite = true;
    double squares = 0.0, magnitudes = 0.0;
    float low = x[begin], high = x[begin];
    for (int64_t i = begin; i < end; ++i) {
      finite = finite && std::isfinite(x[i]);
      squares += static_cast<double>(x[i]) * x[i];
      magnitudes += std::fabs(static_cast<double>(x[i]));
      low = std::min(low, x[i]);
      high = std::max(high, x[i]);
    }
    switch (c.kind) {
      case Kind::kQsgd:
        stats.push_back(finite ? static_cast<float>(std::sqrt(squares)) : kNaN);
        break;
      case Kind::kSign:
        stats.push_back(finite ? static_cast<float>(magnitudes / (end - begin)) : kNaN);
        break;
      case Kind::kInt8:
        stats.push_back(finite ? low : kNaN);
        stats.push_back(finite ? (high - low) / 255.0f : kNaN);
        break;
    }
  }
  return stats;
}

float uniform_at(uint64_t key, uint64_t step, int64_t i) {
  const uint64_t index = static_cast<uint64_t>(i);
  return uniform_float(philox_block(key, step, index / 4).v[index % 4]);
}

// One code per element, given the statistics (so that a statistic rounded differently by a
// different summation order does not hide or cause a code mismatch).
std::vector<uint32_t> reference_codes(const Codec& c, const std::vector<float>& x, int64_t chunk,
                                      const std::vector<float>& stats, uint64_t step,
                                      uint64_t key = kKey) {
  std::vector<uint32_t> codes(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    const auto i = static_cast<int64_t>(j);
    const int64_t ch = i / chunk;
    switch (c.kind) {
      case Kind::kSign:
        codes[j] = std::signbit(x[j]) ? 1u : 0u;
        break;
      case Kind::kInt8: {
        const float low = stats[2 * ch], step_size = stats[2 * ch + 1];
        if (!(step_size > 0.0f)) break;
        const float s = std::clamp((x[j] - low) / step_size, 0.0f, 255.0f);
        codes[j] = static_cast<uint32_t>(std::nearbyint(s));  // ties to even
        break;
      }
      case Kind::kQsgd: {
        const float norm = stats[ch];
        if (!(norm > 0.0f)) break;
        const auto levels = static_cast<float>(c.levels());
        // r = |x| / norm * s, evaluated as |x| * (s / norm) like the shared per-element code
        // (kernels/common/elementwise.h), so the CPU and CUDA kernels agree bit for bit.
        float r = std::fabs(x[j]) * (levels / norm);
        r = r < levels ? r : levels;
        const float floor_r = std::floor(r);
        uint32_t level =
            static_cast<uint32_t>(floor_r) + (uniform_at(key, step, i) < r - floor_r ? 1u : 0u);
        level = std::min<uint32_t>(level, static_cast<uint32_t>(c.levels()));
        codes[j] = (std::signbit(x[j]) ? 1u << (c.bits - 1) : 0u) | level;
        break;
      }
    }
  }
  return codes;
}

// The documented layout: statistics, then codes packed little-endian within bytes.
std::vector<uint8_t> reference_payload(const Codec& c, int64_t n, int64_t chunk,
                                       const std::vector<float>& stats,
                                       const std::vector<uint32_t>& codes) {
  std::vector<uint8_t> payload(payload_bytes(c, n, chunk), 0);
  std::memcpy(payload.data(), stats.data(), 4 * stats.size());
  uint8_t* packed = payload.data() + 4 * stats.size();
  const int per_byte = 8 / c.bits;
  for (int64_t i = 0; i < n; ++i) {
    packed[i / per_byte] |= static_cast<uint8_t>(codes[i] << ((i % per_byte) * c.bits));
  }
  return payload;
}

std::vector<uint8_t> reference_encode(const Codec& c, const std::vector<float>& x, int64_t chunk,
                                      uint64_t step, uint64_t key = kKey) {
  const auto stats = reference_stats(c, x, chunk);
  return reference_payload(c, static_cast<int64_t>(x.size()), chunk, stats,
                           reference_codes(c, x, chunk, stats, step, key));
}

// The value element i decodes to, from a payload.
float reference_value(const Codec& c, const std::vector<uint8_t>& payload, int64_t n, int64_t chunk,
                      int64_t i) {
  const int64_t ch = i / chunk;
  const int64_t stats = c.stats() * num_chunks(n, chunk);
  const int per_byte = 8 / c.bits;
  const uint32_t code =
      (payload[4 * stats + i / per_byte] >> ((i % per_byte) * c.bits)) & ((1u << c.bits) - 1u);
  switch (c.kind) {
    case Kind::kSign:
      return code ? -stat(payload, ch) : stat(payload, ch);
    case Kind::kInt8:
      return stat(payload, 2 * ch) + static_cast<float>(code) * stat(payload, 2 * ch + 1);
    case Kind::kQsgd:
    default: {
      const uint32_t sign_bit = 1u << (c.bits - 1);
      const float magnitude = stat(payload, ch) * static_cast<float>(code & ~sign_bit) / c.levels();
      return (code & sign_bit) ? -magnitude : magnitude;
    }
  }
}

std::string where(const Codec& c, int64_t n, int64_t chunk) {
  return c.name() + " n=" + std::to_string(n) + " chunk=" + std::to_string(chunk);
}

// -- layout ---------------------------------------------------------------------------------------

TEST(QuantizeLayout, PayloadSizeFormula) {
  EXPECT_EQ(num_chunks(1, 8), 1);
  EXPECT_EQ(num_chunks(17, 8), 3);
  EXPECT_EQ(chunked_payload_bytes(1, 64, 1, 1), 4 + 1);
  EXPECT_EQ(chunked_payload_bytes(65, 64, 1, 4), 8 + 33);
  EXPECT_EQ(chunked_payload_bytes(9, 8, 1, 2), 8 + 3);
  EXPECT_EQ(chunked_payload_bytes(128, 64, 2, 8), 16 + 128);
}

// Hand-computed payloads: they pin the layout independently of the reference above.
TEST(QuantizeLayout, SignGoldenBytes) {
  const std::vector<float> x{-1, 2, -0.0f, 4, 5, -6, 7, 8, -9};
  // Chunk 0: mean 33 / 8 = 4.125 (0x40840000), signs of elements 0, 2, 5. Chunk 1: 9, sign.
  const std::vector<uint8_t> expected{0x00, 0x00, 0x84, 0x40, 0x00, 0x00, 0x10, 0x41, 0x25, 0x01};
  EXPECT_EQ(encoded({Kind::kSign, 1}, x, 8), expected);
}

TEST(QuantizeLayout, Int8GoldenBytesRoundHalfToEven) {
  // min 0, max 255: step 1, so every code is round-half-even(x).
  // Chunk 1: min 7, step 127.5 / 255 = 0.5.
  const std::vector<float> x{0, 255, 2.5f, 3.5f, 1, 254.5f, 127.5f, 128.5f, 7, 134.5f};
  const std::vector<uint8_t> expected{0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,  // 0, 1
                                      0x00, 0x00, 0xe0, 0x40, 0x00, 0x00, 0x00, 0x3f,  // 7, .5
                                      0,    255,  2,    4,    1,    254,  128,  128,  0, 255};
  EXPECT_EQ(encoded({Kind::kInt8, 8}, x, 8), expected);
}

TEST(QuantizeLayout, QsgdGoldenBytes) {
  // norm 2 and r = 7 (or 0) for every element: no randomness in the levels.
  const std::vector<float> x{-2, 0, -0.0f, 0, 0, 0, 0, 0, 0};
  const std::vector<uint8_t> norms{0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00};  // 2, 0
  auto with_codes = [&](std::vector<uint8_t> codes) {
    codes.insert(codes.begin(), norms.begin(), norms.end());
    return codes;
  };
  // bits 2: codes 3 (sign | 1), 0, 2 (sign | 0), 0 | ...; bits 4: 0xF, 0, 8, 0 | ...
  EXPECT_EQ(encoded({Kind::kQsgd, 2}, x, 8, 5), with_codes({0x23, 0x00, 0x00}));
  EXPECT_EQ(encoded({Kind::kQsgd, 4}, x, 8, 5), with_codes({0x0F, 0x08, 0, 0, 0}));
  EXPECT_EQ(encoded({Kind::kQsgd, 8}, x, 8, 5), with_codes({0xFF, 0, 0x80, 0, 0, 0, 0, 0, 0}));
}

// Element i's random number is word i of the stream of (key, step): the tensor index, not the
// index within its chunk.
TEST(QuantizeLayout, QsgdDrawsThePhiloxWordAtTheTensorIndex) {
  // Chunk 1 (elements 8..15) holds r = 3.5 at element 11: level 4 exactly when u < 0.5.
  std::vector<float> x(16, 0.0f);
  x[11] = 0.5f;
  x[8] = -std::sqrt(0.75f);
  int rounded_up = 0;
  for (uint64_t step = 0; step < 200; ++step) {
    const auto payload = encoded({Kind::kQsgd, 4}, x, 8, step);
    const float r = 0.5f * (7.0f / stat(payload, 1));
    const uint32_t level = (payload[8 + 5] >> 4) & 7u;  // element 11: high nibble of byte 5
    const float u = uniform_at(kKey, step, 11);
    ASSERT_EQ(level, std::floor(r) + (u < r - std::floor(r) ? 1u : 0u)) << "step " << step;
    rounded_up += level == 4;
  }
  EXPECT_GT(rounded_up, 60);  // about half of the steps
  EXPECT_LT(rounded_up, 140);
}

// -- bit-exact against the reference --------------------------------------------------------------

struct Shape {
  int64_t n, chunk;
};

std::vector<Shape> shapes() {
  std::vector<Shape> s;
  for (const int64_t chunk : {8, 24, 64, 1000, 2056}) {
    for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, chunk - 1, chunk,
                            chunk + 1, 3 * chunk + 5, 5 * chunk}) {
      if (n >= 1) s.push_back({n, chunk});
    }
  }
  return s;
}

TEST(Quantize, DyadicDataMatchesReferenceBitForBit) {
  for (const Codec& c : kCodecs) {
    for (const Shape s : shapes()) {
      const auto x = dyadic(s.n, static_cast<uint32_t>(s.n * 31 + s.chunk));
      const auto payload = encoded(c, x, s.chunk, 7);
      ASSERT_EQ(payload, reference_encode(c, x, s.chunk, 7)) << where(c, s.n, s.chunk);
      // A different poison: a byte the encoder skipped would show up as a difference.
      EXPECT_EQ(encoded(c, x, s.chunk, 7, serial_runner(), 0x00), payload);
    }
  }
}

TEST(Quantize, NormalDataMatchesReference) {
  for (const Codec& c : kCodecs) {
    for (const Shape s : shapes()) {
      const auto x = normal(s.n, static_cast<uint32_t>(s.n + 7 * s.chunk), 3.0f);
      const auto payload = encoded(c, x, s.chunk, 3);
      const auto stats = stats_of(c, payload, s.n, s.chunk);
      const auto expected = reference_stats(c, x, s.chunk);
      for (size_t i = 0; i < stats.size(); ++i) {
        // Summation order may move a sum's last double bits, never the float by more than 1 ulp.
        EXPECT_NEAR(stats[i], expected[i], 1.2e-7f * std::fabs(expected[i]))
            << where(c, s.n, s.chunk) << " stat " << i;
      }
      ASSERT_EQ(payload,
                reference_payload(c, s.n, s.chunk, stats, reference_codes(c, x, s.chunk, stats, 3)))
          << where(c, s.n, s.chunk);
    }
  }
}

TEST(Quantize, DecodeAddsAlphaTimesTheDecodedValues) {
  for (const Codec& c : kCodecs) {
    for (const Shape s : shapes()) {
      const auto x = normal(s.n, static_cast<uint32_t>(s.n), 2.0f);
      const auto payload = encoded(c, x, s.chunk, 1);
      const auto before = normal(s.n, 99);
      for (const float alpha : {1.0f, -1.0f, 0.375f}) {
        const auto after = decoded(c, payload, s.n, s.chunk, before, alpha);
        for (int64_t i = 0; i < s.n; ++i) {
          const float expected = before[i] + alpha * reference_value(c, payload, s.n, s.chunk, i);
          ASSERT_FLOAT_EQ(after[i], expected) << where(c, s.n, s.chunk) << " i=" << i;
        }
      }
    }
  }
}

TEST(Quantize, DecodingTwiceAddsTwiceAndMinusOneUndoesIt) {
  for (const Codec& c : kCodecs) {
    const auto x = normal(300, 4);
    const auto payload = encoded(c, x, 64, 2);
    const auto once = decoded(c, payload, 300, 64, std::vector<float>(300, 0.0f));
    const auto twice = decoded(c, payload, 300, 64, once);
    const auto undone = decoded(c, payload, 300, 64, once, -1.0f);
    for (int i = 0; i < 300; ++i) {
      EXPECT_EQ(twice[i], 2.0f * once[i]) << c.name();
      EXPECT_EQ(undone[i], 0.0f) << c.name();
    }
  }
}

TEST(Quantize, ThreadsDoNotChangeAnyByte) {
  const testing::ThreadRunner threads(3);
  for (const Codec& c : kCodecs) {
    for (const int64_t chunk : {64, 1000}) {
      const int64_t n = 200003;  // many tasks of whole chunks, and a short last chunk
      const auto x = normal(n, 21);
      const auto serial = encoded(c, x, chunk, 8);
      EXPECT_EQ(encoded(c, x, chunk, 8, threads), serial) << where(c, n, chunk);
      const auto start = normal(n, 22);
      EXPECT_EQ(decoded(c, serial, n, chunk, start, 0.5f, threads),
                decoded(c, serial, n, chunk, start, 0.5f))
          << where(c, n, chunk);
    }
  }
}

// -- round-trip bounds ----------------------------------------------------------------------------

TEST(Quantize, Int8IsWithinHalfAStep) {
  const Codec c{Kind::kInt8, 8};
  for (const Shape s : shapes()) {
    const auto x = normal(s.n, static_cast<uint32_t>(s.chunk), 10.0f);
    const auto payload = encoded(c, x, s.chunk);
    const auto y = decoded(c, payload, s.n, s.chunk, std::vector<float>(s.n, 0.0f));
    for (int64_t i = 0; i < s.n; ++i) {
      const float low = stat(payload, 2 * (i / s.chunk));
      const float step = stat(payload, 2 * (i / s.chunk) + 1);
      // Half a step, plus the float rounding of (x - min) / step and of min + q * step.
      const float slack = 4e-7f * (std::fabs(low) + 255.0f * step);
      EXPECT_LE(std::fabs(y[i] - x[i]), step / 2 + slack) << where(c, s.n, s.chunk) << " i=" << i;
    }
  }
}

// A range of 300 subnormal ulps: the step rounds to one ulp, (x - min) / step reaches 300, and
// the code must clamp to 255 (on the vector path and on the scalar tail).
TEST(Quantize, Int8ClampsCodesWhenTheStepRoundsDown) {
  const float ulp = std::ldexp(1.0f, -149);
  std::vector<float> x;
  for (const int k : {0, 300, 128, 255, 256, 299, 3, 17, 290, 280, 1, 2, 4, 5, 6, 7, 298, 0, 257}) {
    x.push_back(static_cast<float>(k) * ulp);
  }
  const Codec c{Kind::kInt8, 8};
  const auto payload = encoded(c, x, 64);
  ASSERT_EQ(stat(payload, 1), ulp);
  EXPECT_EQ(payload, reference_encode(c, x, 64, 0));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(payload[8 + i], std::min(255, static_cast<int>(x[i] / ulp))) << i;
  }
}

TEST(Quantize, SignDecodesToPlusOrMinusTheChunkMeanMagnitude) {
  const Codec c{Kind::kSign, 1};
  for (const Shape s : shapes()) {
    const auto x = normal(s.n, static_cast<uint32_t>(s.n));
    const auto y = decoded(c, encoded(c, x, s.chunk), s.n, s.chunk, std::vector<float>(s.n, 0.0f));
    for (int64_t begin = 0; begin < s.n; begin += s.chunk) {
      const int64_t end = std::min(s.n, begin + s.chunk);
      double mean = 0.0;
      for (int64_t i = begin; i < end; ++i) mean += std::fabs(x[i]);
      mean /= static_cast<double>(end - begin);
      for (int64_t i = begin; i < end; ++i) {
        EXPECT_EQ(std::signbit(y[i]), std::signbit(x[i]));
        EXPECT_NEAR(std::fabs(y[i]), mean, 1e-6 * mean) << where(c, s.n, s.chunk);
        EXPECT_EQ(std::fabs(y[i]), std::fabs(y[begin]));  // one magnitude per chunk
      }
    }
  }
}

TEST(Quantize, QsgdDecodesToOneOfTheTwoNeighbouringLevels) {
  for (const Codec& c : kCodecs) {
    if (c.kind != Kind::kQsgd) continue;
    for (const Shape s : shapes()) {
      const auto x = normal(s.n, static_cast<uint32_t>(s.n + 1));
      const auto payload = encoded(c, x, s.chunk, 9);
      const auto y = decoded(c, payload, s.n, s.chunk, std::vector<float>(s.n, -0.0f));
      for (int64_t begin = 0; begin < s.n; begin += s.chunk) {
        const int64_t end = std::min(s.n, begin + s.chunk);
        double squares = 0.0;
        for (int64_t i = begin; i < end; ++i) squares += static_cast<double>(x[i]) * x[i];
        const double norm = std::sqrt(squares);
        for (int64_t i = begin; i < end; ++i) {
          const double r = std::fabs(x[i]) / norm * c.levels();
          const double level = std::fabs(y[i]) / norm * c.levels();
          EXPECT_NEAR(level, std::round(level), 1e-4) << where(c, s.n, s.chunk);  // on a level
          // (r is computed in float by the kernel: allow for r a hair off an integer.)
          EXPECT_GE(level, std::floor(r - 1e-4) - 1e-4) << where(c, s.n, s.chunk);
          EXPECT_LE(level, std::floor(r + 1e-4) + 1 + 1e-4) << where(c, s.n, s.chunk);
          EXPECT_LE(level, c.levels() + 1e-4);
          EXPECT_EQ(std::signbit(y[i]), std::signbit(x[i]));  // -0 for a negative level 0
        }
      }
    }
  }
}

// r = |x| * (s / norm) can round to a hair above s (here norm = |x|): the level must still clamp
// to s, not spill into the sign bit. The (x, step) pairs were searched for u < r - s.
TEST(Quantize, QsgdLevelClampsWhenRRoundsAboveTheTopLevel) {
  struct Case {
    int bits;
    float x;
    uint64_t step;
  };
  for (const Case k : {Case{4, 0x1.039c06p+0f, 1110555}, Case{8, 0x1.029006p+0f, 146934}}) {
    const Codec c{Kind::kQsgd, k.bits};
    const auto levels = static_cast<float>(c.levels());
    const float r = k.x * (levels / k.x);
    ASSERT_GT(r, levels);                                // the premise of this test
    ASSERT_LT(uniform_at(kKey, k.step, 0), r - levels);  // ... and the draw rounds up
    std::vector<float> x(8, 0.0f);
    x[0] = k.x;
    const auto payload = encoded(c, x, 8, k.step);
    EXPECT_EQ(payload, reference_encode(c, x, 8, k.step)) << c.name();
    EXPECT_EQ(payload[4], c.levels()) << c.name();  // positive, top level
    EXPECT_EQ(decoded(c, payload, 8, 8, std::vector<float>(8, 0.0f))[0], k.x) << c.name();
  }
}

// The mean of many independent decodes converges to x: within 5 standard deviations of the
// mean of `steps` draws, with a draw's variance p (1 - p) (norm / s)^2 <= (norm / s)^2 / 4.
TEST(Quantize, QsgdIsUnbiasedOverSteps) {
  const int steps = 2000;
  for (const Codec& c : kCodecs) {
    if (c.kind != Kind::kQsgd) continue;
    const auto x = normal(256, 5);  // four chunks of 64
    std::vector<double> sum(x.size(), 0.0);
    for (int step = 0; step < steps; ++step) {
      const auto y = decoded(c, encoded(c, x, 64, step), 256, 64, std::vector<float>(256, 0.0f));
      for (size_t i = 0; i < x.size(); ++i) sum[i] += y[i];
    }
    for (int64_t begin = 0; begin < 256; begin += 64) {
      double squares = 0.0;
      for (int64_t i = begin; i < begin + 64; ++i) squares += static_cast<double>(x[i]) * x[i];
      const double sigma = std::sqrt(squares) / c.levels() / 2 / std::sqrt(steps);
      for (int64_t i = begin; i < begin + 64; ++i) {
        EXPECT_NEAR(sum[i] / steps, x[i], 5 * sigma) << c.name() << " i=" << i;
      }
    }
  }
}

TEST(Quantize, QsgdIsDeterministicPerKeyAndStep) {
  const auto x = normal(1000, 6);
  for (const Codec& c : kCodecs) {
    if (c.kind != Kind::kQsgd) continue;
    const auto a = encoded(c, x, 64, 3);
    EXPECT_EQ(encoded(c, x, 64, 3), a);
    EXPECT_NE(encoded(c, x, 64, 4), a) << c.name();
    EXPECT_NE(encoded(c, x, 64, 3, serial_runner(), 0xAB, kKey + 1), a) << c.name();
    // Steps beyond 32 bits use the counter's high word.
    EXPECT_NE(encoded(c, x, 64, 3 + (uint64_t{1} << 32)), a) << c.name();
  }
}

// -- special inputs -------------------------------------------------------------------------------

TEST(Quantize, ZeroAndConstantChunks) {
  for (const Codec& c : kCodecs) {
    for (const float fill : {0.0f, -0.0f, 2.5f, -1.0f}) {
      for (const int64_t n : {1, 9, 100}) {
        const std::vector<float> x(n, fill);
        const auto payload = encoded(c, x, 64);
        EXPECT_EQ(payload, reference_encode(c, x, 64, 0)) << c.name() << " fill=" << fill;
        // Starting from -0 keeps the sign of a zero decode (-0 + v is v).
        const auto y = decoded(c, payload, n, 64, std::vector<float>(n, -0.0f));
        for (int64_t i = 0; i < n; ++i) {
          if (fill == 0.0f) {
            EXPECT_EQ(y[i], 0.0f) << c.name();
            EXPECT_EQ(stat(payload, c.stats() * (i / 64) + c.stats() - 1), 0.0f);
          } else if (c.kind != Kind::kQsgd || n == 1) {
            EXPECT_EQ(y[i], fill) << c.name() << " n=" << n;  // exact for these
          } else {
            // norm = |fill| sqrt(m) for m elements: r = s / sqrt(m), and one of the two levels
            // around it.
            const int64_t m = std::min<int64_t>(n - i / 64 * 64, 64);
            const double r = c.levels() / std::sqrt(static_cast<double>(m));
            const double level = std::fabs(y[i]) / stat(payload, i / 64) * c.levels();
            EXPECT_NEAR(level, std::round(level), 1e-4) << c.name();
            EXPECT_GE(level, std::floor(r) - 1e-4) << c.name();
            EXPECT_LE(level, std::floor(r) + 1 + 1e-4) << c.name();
            EXPECT_EQ(std::signbit(y[i]), std::signbit(fill)) << c.name();
          }
        }
      }
    }
  }
}

TEST(Quantize, NegativeZeroCountsAsNegative) {
  std::vector<float> x(16, 0.0f);
  x[1] = -0.0f;
  x[5] = 3.0f;
  x[9] = -0.0f;
  const auto sign = encoded({Kind::kSign, 1}, x, 8);
  EXPECT_EQ(sign[8], 0x02);
  EXPECT_EQ(sign[9], 0x02);
  const auto qsgd = encoded({Kind::kQsgd, 4}, x, 8);
  EXPECT_EQ(qsgd[8], 0x80);      // element 1: sign | level 0
  EXPECT_EQ(qsgd[10], 0x70);     // element 5: level 7
  EXPECT_EQ(qsgd[8 + 4], 0x00);  // element 9 is in an all-zero chunk: norm 0, all-zero codes
}

TEST(Quantize, NonFiniteChunkDecodesToNaNAndLeavesOthersAlone) {
  for (const Codec& c : kCodecs) {
    for (const float bad : {kNaN, -kNaN, kInf, -kInf}) {
      for (const int64_t at : {64, 70, 127, 200}) {  // first, middle, last of chunk 1; the tail
        auto x = normal(203, 6);
        x[at] = bad;
        const int64_t bad_chunk = at / 64;
        const auto payload = encoded(c, x, 64);
        for (int k = 0; k < c.stats(); ++k) {
          EXPECT_TRUE(std::isnan(stat(payload, c.stats() * bad_chunk + k))) << c.name();
        }
        const auto y = decoded(c, payload, 203, 64, std::vector<float>(203, 1.0f));
        auto finite_x = x;
        finite_x[at] = 0.0f;
        const auto expected = reference_stats(c, finite_x, 64);
        for (int64_t i = 0; i < 203; ++i) {
          if (i / 64 == bad_chunk) {
            EXPECT_TRUE(std::isnan(y[i])) << c.name() << " at=" << at << " i=" << i;
          } else {
            EXPECT_TRUE(std::isfinite(y[i])) << c.name() << " at=" << at << " i=" << i;
            EXPECT_NEAR(stat(payload, c.stats() * (i / 64)), expected[c.stats() * (i / 64)],
                        1e-6f * std::fabs(expected[c.stats() * (i / 64)]));
          }
        }
      }
    }
  }
}

// -- fp16 / bf16 ----------------------------------------------------------------------------------

// Round to nearest even onto the format's grid, computed in double from the format's definition:
// `mantissa` stored bits, smallest normal exponent `min_exponent`, overflow at 2^max_exponent.
double round_to_grid(double a, int mantissa, int min_exponent, int overflow_exponent) {
  if (a == 0.0) return 0.0;
  int e;
  std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1): the leading bit is 2^(e - 1)
  const double ulp = std::ldexp(1.0, std::max(e - 1, min_exponent) - mantissa);
  const double rounded = std::nearbyint(a / ulp) * ulp;  // a / ulp is exact; ties to even
  return rounded >= std::ldexp(1.0, overflow_exponent) ? HUGE_VAL : rounded;
}

uint16_t reference_half(float v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  if (std::isnan(v)) return sign | 0x7e00;
  const double a = round_to_grid(std::fabs(static_cast<double>(v)), 10, -14, 16);
  if (std::isinf(a)) return sign | 0x7c00;
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(a * std::ldexp(1.0, 24));
  int e;
  const double m = std::frexp(a, &e);
  return sign | static_cast<uint16_t>((e - 1 + 15) << 10) |
         static_cast<uint16_t>((2 * m - 1) * 1024);
}

uint16_t reference_bf16(float v) {
  if (std::isnan(v)) return 0x7fc0;
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = round_to_grid(std::fabs(static_cast<double>(v)), 7, -126, 128);
  if (std::isinf(a)) return sign | 0x7f80;
  return sign | static_cast<uint16_t>(bits_of(static_cast<float>(a)) >> 16);  // exact in float
}

double half_value(uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0) return sign * mantissa * std::ldexp(1.0, -24);
  if (exponent == 31) return mantissa ? std::nan("") : sign * HUGE_VAL;
  return sign * (1024 + mantissa) * std::ldexp(1.0, exponent - 25);
}

// Special values and what the reference itself must say about them.
struct CastCase {
  float value;
  uint16_t half, bf16;
};
const CastCase kCastCases[] = {
    {0.0f, 0x0000, 0x0000},
    {-0.0f, 0x8000, 0x8000},
    {1.0f, 0x3c00, 0x3f80},
    {-2.5f, 0xc100, 0xc020},
    {65504.0f, 0x7bff, 0x4780},    // the largest half
    {65519.996f, 0x7bff, 0x4780},  // just below the half overflow tie
    {65520.0f, 0x7c00, 0x4780},    // the tie rounds to even: inf
    {1e10f, 0x7c00, 0x5015},       // beyond half: inf
    {kInf, 0x7c00, 0x7f80},
    {-kInf, 0xfc00, 0xff80},
    {kNaN, 0x7e00, 0x7fc0},
    {-kNaN, 0xfe00, 0x7fc0},                               // bf16 NaN is always 0x7fc0 (as c10)
    {from_bits(0x7f800001u), 0x7e00, 0x7fc0},              // signalling NaN with a low payload
    {std::ldexp(1.0f, -14), 0x0400, 0x3880},               // the smallest normal half
    {std::ldexp(1.0f, -24), 0x0001, 0x3380},               // the smallest subnormal half
    {std::ldexp(1.0f, -25), 0x0000, 0x3300},               // tie between 0 and 2^-24: even, 0
    {std::ldexp(1.0f, -25) * 1.0000001f, 0x0001, 0x3300},  // just above the tie
    {std::ldexp(3.0f, -25), 0x0002, 0x33c0},               // tie between 1 and 2 ulps: 2
    {std::ldexp(1023.0f, -24), 0x03ff, 0x3880},            // the largest subnormal
    {std::ldexp(2047.0f, -25), 0x0400, 0x3880},            // tie between 0x3ff and 0x400: 0x400
    {1.0f + std::ldexp(1.0f, -11), 0x3c00, 0x3f80},        // tie: even mantissa 0
    {1.0f + std::ldexp(3.0f, -11), 0x3c02, 0x3f80},        // tie: even mantissa 2
    {1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20), 0x3c01, 0x3f80},
    {from_bits(0x3f808000u), 0x3c04, 0x3f80},  // bf16 tie: even
    {from_bits(0x3f818000u), 0x3c0c, 0x3f82},  // bf16 tie: even, rounds up
    {from_bits(0x3f808001u), 0x3c04, 0x3f81},
    {from_bits(0x7f7fffffu), 0x7c00, 0x7f80},  // the largest float: bf16 rounds to inf
    {from_bits(0x7f7f7fffu), 0x7c00, 0x7f7f},
    {from_bits(0x00000001u), 0x0000, 0x0000},  // float subnormals
    {from_bits(0x80008000u), 0x8000, 0x8000},  // bf16 subnormal tie: even, -0
    {from_bits(0x00018000u), 0x0000, 0x0002},
    {1e-6f, 0x0011, 0x3586},
};

TEST(Casts, ReferenceAgreesWithHandWrittenSpecialValues) {
  for (const CastCase& k : kCastCases) {
    EXPECT_EQ(reference_half(k.value), k.half) << std::hexfloat << k.value;
    EXPECT_EQ(reference_bf16(k.value), k.bf16) << std::hexfloat << k.value;
  }
}

// Special values, random floats and a sweep over all exponents, through both encoders.
std::vector<float> cast_inputs() {
  std::vector<float> x;
  for (const CastCase& k : kCastCases) {
    x.push_back(k.value);
    x.push_back(-k.value);
  }
  const auto wide = normal(20000, 12, 1000.0f);
  x.insert(x.end(), wide.begin(), wide.end());
  const auto narrow = normal(20000, 13, 1e-5f);
  x.insert(x.end(), narrow.begin(), narrow.end());
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 65521) x.push_back(from_bits(uint32_t(b)));
  // Every tie and near-tie around each half exponent's rounding point.
  for (int e = -26; e <= 16; ++e) {
    for (const uint32_t low : {0x0fffu, 0x1000u, 0x1001u, 0x2fffu, 0x3000u, 0x3001u}) {
      x.push_back(from_bits(((127u + e) << 23) | low));
      x.push_back(from_bits(((127u + e) << 23) | 0x7fe000u | low));
    }
  }
  return x;
}

TEST(Casts, Fp16MatchesBitLevelReference) {
  const auto x = cast_inputs();
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> out(n + 8, 0xDEAD);
  fp16_encode(x.data(), n, 1.0f, out.data(), serial_runner());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(out[i], reference_half(x[i])) << std::hexfloat << x[i] << " i=" << i;
  }
  for (int64_t i = n; i < n + 8; ++i) EXPECT_EQ(out[i], 0xDEAD);
}

TEST(Casts, Bf16MatchesBitLevelReference) {
  const auto x = cast_inputs();
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> out(n + 8, 0xDEAD);
  bf16_encode(x.data(), n, 1.0f, out.data(), serial_runner());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(out[i], reference_bf16(x[i])) << std::hexfloat << x[i] << " i=" << i;
  }
  for (int64_t i = n; i < n + 8; ++i) EXPECT_EQ(out[i], 0xDEAD);
}

TEST(Casts, ScaleMultipliesBeforeRounding) {
  const auto x = normal(1001, 14, 100.0f);
  for (const float scale : {0.5f, 3.0f, 1e-6f, 1024.0f, 65536.0f, -1.0f}) {
    std::vector<uint16_t> half(x.size()), bf16(x.size());
    fp16_encode(x.data(), 1001, scale, half.data(), serial_runner());
    bf16_encode(x.data(), 1001, scale, bf16.data(), serial_runner());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(half[i], reference_half(x[i] * scale)) << scale;
      ASSERT_EQ(bf16[i], reference_bf16(x[i] * scale)) << scale;
    }
  }
}

TEST(Casts, Fp16DecodesEveryCode) {
  std::vector<uint16_t> all(65536);
  for (int h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  std::vector<float> out(65536, -0.0f);  // -0 + v is v, the sign of zero included
  fp16_decode_add(all.data(), 65536, out.data(), serial_runner());
  for (int h = 0; h < 65536; ++h) {
    const double v = half_value(static_cast<uint16_t>(h));
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(out[h])) << h;
    } else {
      ASSERT_TRUE(same_bits(out[h], static_cast<float>(v))) << std::hex << h;
    }
  }
}

TEST(Casts, Bf16DecodesEveryCode) {
  std::vector<uint16_t> all(65536);
  for (int h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  std::vector<float> out(65536, -0.0f);
  bf16_decode_add(all.data(), 65536, out.data(), serial_runner());
  for (int h = 0; h < 65536; ++h) {
    const float v = from_bits(static_cast<uint32_t>(h) << 16);
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(out[h])) << h;
    } else {
      ASSERT_TRUE(same_bits(out[h], v)) << std::hex << h;
    }
  }
}

TEST(Casts, DecodeAddsAlphaTimesTheValue) {
  const auto x = normal(777, 15);
  const auto start = normal(777, 16);
  std::vector<uint16_t> half(777), bf16(777);
  fp16_encode(x.data(), 777, 1.0f, half.data(), serial_runner());
  bf16_encode(x.data(), 777, 1.0f, bf16.data(), serial_runner());
  auto a = start, b = start;
  fp16_decode_add(half.data(), 777, a.data(), serial_runner(), -0.5f);
  bf16_decode_add(bf16.data(), 777, b.data(), serial_runner(), -0.5f);
  for (int i = 0; i < 777; ++i) {
    EXPECT_FLOAT_EQ(a[i], start[i] - 0.5f * static_cast<float>(half_value(half[i])));
    EXPECT_FLOAT_EQ(b[i], start[i] - 0.5f * from_bits(static_cast<uint32_t>(bf16[i]) << 16));
  }
}

TEST(Casts, ThreadsDoNotChangeAnyBit) {
  const testing::ThreadRunner threads(3);
  const auto x = normal(300007, 17, 10.0f);
  const auto n = static_cast<int64_t>(x.size());
  for (const bool half : {true, false}) {
    const auto encode_with = half ? fp16_encode : bf16_encode;
    const auto decode_with = half ? fp16_decode_add : bf16_decode_add;
    std::vector<uint16_t> a(n), b(n);
    encode_with(x.data(), n, 0.25f, a.data(), serial_runner());
    encode_with(x.data(), n, 0.25f, b.data(), threads);
    EXPECT_EQ(a, b);
    std::vector<float> ya(n, 1.0f), yb(n, 1.0f);
    decode_with(a.data(), n, ya.data(), serial_runner(), 2.0f);
    decode_with(a.data(), n, yb.data(), threads, 2.0f);
    EXPECT_EQ(ya, yb);
  }
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
