#include "kernels/cpu/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/common/philox.h"
#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

enum class Codec { kQsgd2, kQsgd4, kQsgd8, kSign, kInt8 };

struct Encoded {
  std::vector<uint8_t> payload;
  std::vector<float> decoded;
};

int bits_of(Codec c) {
  switch (c) {
    case Codec::kQsgd2:
      return 2;
    case Codec::kQsgd4:
      return 4;
    case Codec::kSign:
      return 1;
    default:
      return 8;
  }
}

int64_t payload_size(Codec c, int64_t n, int64_t chunk) {
  return chunked_payload_bytes(n, chunk, c == Codec::kInt8 ? 2 : 1, bits_of(c));
}

Encoded run(Codec c, const std::vector<float>& x, int64_t chunk, uint64_t step = 0,
            const TaskRunner& runner = serial_runner(), float initial = 0.0f) {
  const auto n = static_cast<int64_t>(x.size());
  Encoded e{std::vector<uint8_t>(payload_size(c, n, chunk), 0xAB), std::vector<float>(n, initial)};
  switch (c) {
    case Codec::kQsgd2:
    case Codec::kQsgd4:
    case Codec::kQsgd8:
      qsgd_encode(x.data(), n, bits_of(c), chunk, 77, step, e.payload.data(), runner);
      qsgd_decode_add(e.payload.data(), n, bits_of(c), chunk, e.decoded.data(), runner);
      break;
    case Codec::kSign:
      sign_encode(x.data(), n, chunk, e.payload.data(), runner);
      sign_decode_add(e.payload.data(), n, chunk, e.decoded.data(), runner);
      break;
    case Codec::kInt8:
      int8_encode(x.data(), n, chunk, e.payload.data(), runner);
      int8_decode_add(e.payload.data(), n, chunk, e.decoded.data(), runner);
      break;
  }
  return e;
}

const Codec kAll[] = {Codec::kQsgd2, Codec::kQsgd4, Codec::kQsgd8, Codec::kSign, Codec::kInt8};
const int64_t kSizes[] = {1, 7, 8, 9, 63, 64, 65, 1000, 100003};

TEST(Quantize, PayloadSizeFormula) {
  EXPECT_EQ(chunked_payload_bytes(1, 64, 1, 1), 4 + 1);
  EXPECT_EQ(chunked_payload_bytes(65, 64, 1, 4), 8 + 33);
  EXPECT_EQ(chunked_payload_bytes(128, 64, 2, 8), 16 + 128);
}

TEST(Quantize, EveryPayloadByteIsWrittenAndThreadsDoNotMatter) {
  const ::gradcomp::kernels::cpu::testing::ThreadRunner threads(3);
  for (const Codec c : kAll) {
    for (const int64_t n : kSizes) {
      const auto x = normal(n, static_cast<uint32_t>(n));
      // Two different poison values: a byte the encoder skipped would differ.
      auto a = run(c, x, 64, 1);
      Encoded b{std::vector<uint8_t>(payload_size(c, n, 64), 0x11), std::vector<float>(n, 0.0f)};
      switch (c) {
        case Codec::kSign:
          sign_encode(x.data(), n, 64, b.payload.data(), threads);
          break;
        case Codec::kInt8:
          int8_encode(x.data(), n, 64, b.payload.data(), threads);
          break;
        default:
          qsgd_encode(x.data(), n, bits_of(c), 64, 77, 1, b.payload.data(), threads);
      }
      EXPECT_EQ(a.payload, b.payload) << "codec " << static_cast<int>(c) << " n=" << n;
    }
  }
}

TEST(Quantize, SignDecodesToChunkMeanWithSign) {
  const auto x = normal(200, 1);
  const auto e = run(Codec::kSign, x, 64);
  for (int64_t begin = 0; begin < 200; begin += 64) {
    const int64_t end = std::min<int64_t>(200, begin + 64);
    double mean = 0.0;
    for (int64_t i = begin; i < end; ++i) mean += std::fabs(x[i]);
    mean /= static_cast<double>(end - begin);
    for (int64_t i = begin; i < end; ++i) {
      EXPECT_FLOAT_EQ(e.decoded[i], std::signbit(x[i]) ? -mean : mean);
    }
  }
  // Bit layout: element j is bit j % 8 of code byte j / 8, set for negative.
  const std::vector<float> signs{-1, 2, -0.0f, 4, 5, -6, 7, 8, -9};
  const auto s = run(Codec::kSign, signs, 64);
  EXPECT_EQ(s.payload[4], 0b00100101);
  EXPECT_EQ(s.payload[5], 0b00000001);
}

TEST(Quantize, Int8IsWithinHalfAStepAndRoundsHalfToEven) {
  for (const int64_t n : kSizes) {
    const auto x = normal(n, 3, 10.0f);
    const auto e = run(Codec::kInt8, x, 64);
    for (int64_t begin = 0; begin < n; begin += 64) {
      const int64_t end = std::min<int64_t>(n, begin + 64);
      float low = x[begin], high = x[begin];
      for (int64_t i = begin; i < end; ++i) {
        low = std::min(low, x[i]);
        high = std::max(high, x[i]);
      }
      const float step = (high - low) / 255.0f;
      for (int64_t i = begin; i < end; ++i) {
        EXPECT_LE(std::fabs(e.decoded[i] - x[i]), step / 2 + 1e-5f * std::fabs(x[i]) + 1e-6f);
      }
      EXPECT_FLOAT_EQ(e.decoded[begin + (std::min_element(x.begin() + begin, x.begin() + end) -
                                         (x.begin() + begin))],
                      low);
    }
  }
  // min 0, max 255: step 1, so 2.5 -> 2 and 3.5 -> 4 (half to even).
  const std::vector<float> ties{0, 255, 2.5f, 3.5f};
  const auto t = run(Codec::kInt8, ties, 64);
  EXPECT_EQ(t.decoded[2], 2.0f);
  EXPECT_EQ(t.decoded[3], 4.0f);
}

TEST(Quantize, QsgdDecodesToNeighbouringLevels) {
  for (const Codec c : {Codec::kQsgd2, Codec::kQsgd4, Codec::kQsgd8}) {
    const int levels = (1 << (bits_of(c) - 1)) - 1;
    const auto x = normal(1000, 4);
    const auto e = run(c, x, 64, 9);
    for (int64_t begin = 0; begin < 1000; begin += 64) {
      const int64_t end = std::min<int64_t>(1000, begin + 64);
      double squares = 0.0;
      for (int64_t i = begin; i < end; ++i) squares += static_cast<double>(x[i]) * x[i];
      const double norm = std::sqrt(squares);
      for (int64_t i = begin; i < end; ++i) {
        const double r = std::fabs(x[i]) / norm * levels;
        const double level = std::fabs(e.decoded[i]) / norm * levels;
        EXPECT_NEAR(level, std::round(level), 1e-3);  // on a level
        EXPECT_GE(level, std::floor(r) - 1e-3);       // and a neighbouring one
        EXPECT_LE(level, std::ceil(r) + 1e-3);
        if (e.decoded[i] != 0.0f) {
          EXPECT_EQ(std::signbit(e.decoded[i]), std::signbit(x[i]));
        }
      }
    }
  }
}

TEST(Quantize, QsgdIsUnbiasedAndDeterministicPerStep) {
  const auto x = normal(64, 5);
  std::vector<double> mean(64, 0.0);
  const int steps = 4000;
  for (int s = 0; s < steps; ++s) {
    const auto e = run(Codec::kQsgd4, x, 64, s);
    for (int i = 0; i < 64; ++i) mean[i] += e.decoded[i] / steps;
  }
  double squares = 0.0;
  for (const float v : x) squares += static_cast<double>(v) * v;
  const double norm = std::sqrt(squares);
  for (int i = 0; i < 64; ++i) {
    // One draw's error is below one level (norm / 7): 6 sigma of the mean of `steps` draws.
    EXPECT_NEAR(mean[i], x[i], 6 * norm / 7 / std::sqrt(steps)) << i;
  }
  EXPECT_EQ(run(Codec::kQsgd4, x, 64, 3).payload, run(Codec::kQsgd4, x, 64, 3).payload);
  EXPECT_NE(run(Codec::kQsgd4, x, 64, 3).payload, run(Codec::kQsgd4, x, 64, 4).payload);
}

TEST(Quantize, ConstantZeroAndOneElementInputs) {
  for (const Codec c : kAll) {
    for (const float fill : {0.0f, -0.0f, 2.5f, -1.0f}) {
      for (const int64_t n : {1, 9, 100}) {
        const auto e = run(c, std::vector<float>(n, fill), 64);
        for (const float v : e.decoded) {
          if (fill == 0.0f) {
            EXPECT_EQ(v, 0.0f);
          } else if (c == Codec::kSign || c == Codec::kInt8 || n == 1) {
            EXPECT_EQ(v, fill);  // deterministic codecs (and one-element QSGD) are exact here
          } else {
            EXPECT_TRUE(std::isfinite(v));
          }
        }
      }
    }
  }
}

TEST(Quantize, NonFiniteChunkDecodesToNaNOthersUntouched) {
  for (const Codec c : kAll) {
    for (const float bad : {kNaN, kInf, -kInf}) {
      auto x = normal(192, 6);
      x[70] = bad;  // chunk 1 of 3
      const auto e = run(c, x, 64);
      for (int i = 0; i < 192; ++i) {
        if (i >= 64 && i < 128) {
          EXPECT_TRUE(std::isnan(e.decoded[i])) << static_cast<int>(c) << " i=" << i;
        } else {
          EXPECT_TRUE(std::isfinite(e.decoded[i])) << static_cast<int>(c) << " i=" << i;
        }
      }
    }
  }
}

TEST(Quantize, DecodeAddsToWhatIsThere) {
  for (const Codec c : kAll) {
    const auto x = normal(100, 7);
    const auto zero = run(c, x, 64, 2);
    const auto three = run(c, x, 64, 2, serial_runner(), 3.0f);
    for (int i = 0; i < 100; ++i) EXPECT_FLOAT_EQ(three.decoded[i], zero.decoded[i] + 3.0f);
  }
}

// -- casts ----------------------------------------------------------------------------------

uint32_t bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}
float from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Round to nearest even by exhaustive comparison: the half whose value is closest (ties to
// an even mantissa), computed in double from the half's definition.
double half_value(uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0) return sign * mantissa * std::ldexp(1.0, -24);
  if (exponent == 31) return mantissa ? std::nan("") : sign * HUGE_VAL;
  return sign * (1024 + mantissa) * std::ldexp(1.0, exponent - 25);
}

uint16_t reference_half(float v) {
  if (std::isnan(v)) return (bits(v) >> 16 & 0x8000) | 0x7e00;
  const uint16_t sign = (bits(v) >> 16) & 0x8000;
  const double a = std::fabs(static_cast<double>(v));
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t best = 0;
  double best_error = HUGE_VAL;
  for (uint16_t h = 0; h < 0x7c00; ++h) {
    const double error = std::fabs(half_value(h) - a);
    if (error < best_error || (error == best_error && (h & 1) == 0)) {
      best = h;
      best_error = error;
    }
  }
  return sign | best;
}

TEST(Casts, Fp16MatchesExhaustiveRoundToNearestEven) {
  std::vector<float> x{
      0.0f,   -0.0f,  1.0f,    65504.0f,       65519.99f,     65520.0f,
      1e-8f,  -3e-8f, 6.1e-5f, 5.96e-8f,       2.98e-8f,      2.99e-8f,
      -1e10f, kInf,   -kInf,   1.00048828125f, 1.00146484375f};  // the last two: ties
  const auto more = normal(200, 8, 100.0f);
  x.insert(x.end(), more.begin(), more.end());
  std::vector<uint16_t> out(x.size());
  fp16_encode(x.data(), static_cast<int64_t>(x.size()), 1.0f, out.data(), serial_runner());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(out[i], reference_half(x[i])) << x[i];
    std::vector<float> back{0.0f};
    fp16_decode_add(&out[i], 1, back.data(), serial_runner());
    if (std::isfinite(half_value(out[i]))) {
      EXPECT_EQ(back[0], static_cast<float>(half_value(out[i])));
    }
  }
  uint16_t nan_half;
  const float nan = kNaN;
  fp16_encode(&nan, 1, 1.0f, &nan_half, serial_runner());
  EXPECT_EQ(nan_half & 0x7e00, 0x7e00);
}

TEST(Casts, Bf16RoundsToNearestEvenAndScales) {
  const std::vector<float> x{
      1.0f, from_bits(0x3f808000u), from_bits(0x3f818000u), from_bits(0x3f808001u), -2.5f, 3.4e38f,
      kNaN};
  const std::vector<uint16_t> expected{0x3f80, 0x3f80, 0x3f82, 0x3f81, 0xc020, 0x7f80, 0x7fc0};
  std::vector<uint16_t> out(x.size());
  bf16_encode(x.data(), static_cast<int64_t>(x.size()), 1.0f, out.data(), serial_runner());
  EXPECT_EQ(out, expected);
  const float half = 0.5f * 3.0f;
  uint16_t scaled;
  bf16_encode(&half, 1, 2.0f, &scaled, serial_runner());
  EXPECT_EQ(scaled, 0x4040);  // 3.0
  std::vector<float> back{1.0f};
  bf16_decode_add(&scaled, 1, back.data(), serial_runner());
  EXPECT_EQ(back[0], 4.0f);
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
