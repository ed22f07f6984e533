#include "kernels/cpu/threshold.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/common/philox.h"
#include "kernels/cpu/topk.h"
#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

enum class Data {
  kNormal,
  kFewValues,  // heavy ties
  kAllEqual,
  kAllZero,
  kSignedZeros,  // -0.0 mixed with 0.0 and a few normal values
  kNonFinite,    // normal with +-inf and NaN (both signs, several payloads)
  kOutliers,     // normal with a handful of huge values
  kSorted,       // |normal| in ascending order
};

const Data kAllKinds[] = {Data::kNormal,      Data::kFewValues, Data::kAllEqual, Data::kAllZero,
                          Data::kSignedZeros, Data::kNonFinite, Data::kOutliers, Data::kSorted};

float from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

std::vector<float> make_data(int64_t n, Data kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> few(-3, 3);
  std::uniform_int_distribution<int> pick(0, 15);
  const float specials[] = {kInf,
                            -kInf,
                            from_bits(0x7fc00000u),
                            from_bits(0xffc00001u),
                            from_bits(0x7f800001u),
                            from_bits(0x7fffffffu)};
  std::vector<float> x(n);
  for (auto& v : x) {
    switch (kind) {
      case Data::kNormal:
      case Data::kOutliers:
      case Data::kSorted:
        v = normal(rng);
        break;
      case Data::kFewValues:
        v = 0.5f * static_cast<float>(few(rng));
        break;
      case Data::kAllEqual:
        v = -1.25f;
        break;
      case Data::kAllZero:
        v = 0.0f;
        break;
      case Data::kSignedZeros: {
        const int p = pick(rng);
        v = p < 7 ? 0.0f : (p < 14 ? -0.0f : normal(rng));
        break;
      }
      case Data::kNonFinite: {
        const int p = pick(rng);
        v = p < 14 ? normal(rng) : specials[static_cast<size_t>(pick(rng)) % 6];
        break;
      }
    }
  }
  if (kind == Data::kOutliers) {
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 7)) x[i] *= 1e6f;
  }
  if (kind == Data::kSorted) {
    for (auto& v : x) v = std::fabs(v);
    std::sort(x.begin(), x.end());
  }
  return x;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// The documented meaning, one element at a time.
struct Compacted {
  std::vector<float> values;
  std::vector<int32_t> indices;
};
Compacted reference_compact(const std::vector<float>& x, uint32_t threshold) {
  Compacted out;
  for (size_t i = 0; i < x.size(); ++i) {
    if (magnitude_key(x[i]) >= threshold) {
      out.values.push_back(x[i]);
      out.indices.push_back(static_cast<int32_t>(i));
    }
  }
  return out;
}

// Thresholds worth checking for x: the extremes and keys at several quantiles.
std::vector<uint32_t> thresholds_for(const std::vector<float>& x) {
  std::vector<uint32_t> keys;
  for (const float v : x) keys.push_back(magnitude_key(v));
  std::sort(keys.begin(), keys.end());
  std::vector<uint32_t> out{0u,          1u,          magnitude_key(kInf), 0x7fc00000u,
                            0x7fffffffu, 0x80000000u, 0xffffffffu};
  for (const double q : {0.0, 0.01, 0.5, 0.9, 0.999}) {
    if (!keys.empty()) out.push_back(keys[static_cast<size_t>(q * (keys.size() - 1))]);
  }
  return out;
}

TEST(CountAndCompact, MatchScalarReference) {
  testing::ThreadRunner threads(3);
  for (const int64_t n : {0, 1, 7, 17, 1000, 100003, 300001}) {
    for (const Data kind : kAllKinds) {
      const auto x = make_data(n, kind, static_cast<uint32_t>(n) + 7);
      for (const uint32_t t : thresholds_for(x)) {
        const auto expected = reference_compact(x, t);
        const auto count = static_cast<int64_t>(expected.values.size());
        for (const TaskRunner* runner :
             {&serial_runner(), static_cast<const TaskRunner*>(&threads)}) {
          ASSERT_EQ(count_selected(x.data(), n, t, *runner), count) << "n=" << n << " t=" << t;
          std::vector<float> values(count + 1, 7.0f);
          std::vector<int32_t> indices(count + 1, -7);
          ASSERT_EQ(
              compact_selected(x.data(), n, t, values.data(), indices.data(), count + 1, *runner),
              count);
          indices.pop_back();
          ASSERT_EQ(indices, expected.indices) << "n=" << n << " t=" << t;
          for (int64_t i = 0; i < count; ++i) {
            ASSERT_TRUE(same_bits(values[i], expected.values[i])) << "slot " << i;
          }
          EXPECT_EQ(values[count], 7.0f) << "wrote past the selected elements";
        }
      }
    }
  }
}

TEST(CountAndCompact, CapacityBelowCountWritesNothingPastIt) {
  testing::ThreadRunner threads(3);
  const int64_t n = 500000;
  const auto x = make_data(n, Data::kNormal, 3);
  const uint32_t t = magnitude_key(0.5f);  // about 62% selected, in every chunk
  const auto expected = reference_compact(x, t);
  const auto count = static_cast<int64_t>(expected.values.size());
  const float sentinel = -12345.0f;
  for (const int64_t capacity :
       {int64_t{0}, int64_t{1}, int64_t{17}, count / 3, count / 2, count - 1}) {
    for (const TaskRunner* runner : {&serial_runner(), static_cast<const TaskRunner*>(&threads)}) {
      std::vector<float> values(count + 64, sentinel);
      std::vector<int32_t> indices(count + 64, -99);
      ASSERT_EQ(compact_selected(x.data(), n, t, values.data(), indices.data(), capacity, *runner),
                count);
      for (int64_t i = 0; i < capacity; ++i) {
        ASSERT_EQ(indices[i], expected.indices[i]) << "capacity " << capacity << " slot " << i;
        ASSERT_TRUE(same_bits(values[i], expected.values[i]));
      }
      for (int64_t i = capacity; i < count + 64; ++i) {
        ASSERT_EQ(indices[i], -99) << "capacity " << capacity << " slot " << i;
        ASSERT_EQ(values[i], sentinel) << "capacity " << capacity << " slot " << i;
      }
    }
  }
}

TEST(CountAndCompact, SameResultForAnyThreadCount) {
  const int64_t n = 1 << 20;
  const auto x = make_data(n, Data::kFewValues, 21);
  const uint32_t t = magnitude_key(1.5f);
  std::vector<int32_t> first;
  for (const int threads : {1, 2, 3, 5, 8}) {
    testing::ThreadRunner runner(threads);
    const int64_t count = count_selected(x.data(), n, t, runner);
    std::vector<float> values(count);
    std::vector<int32_t> indices(count);
    ASSERT_EQ(compact_selected(x.data(), n, t, values.data(), indices.data(), count, runner),
              count);
    if (first.empty()) first = indices;
    EXPECT_EQ(indices, first) << threads << " threads";
  }
  EXPECT_EQ(first, reference_compact(x, t).indices);
}

uint32_t kth_largest_key(const std::vector<float>& x, int64_t target) {
  std::vector<uint32_t> keys;
  for (const float v : x) keys.push_back(magnitude_key(v));
  std::sort(keys.begin(), keys.end(), std::greater<>());
  return keys[target - 1];
}

TEST(EstimateThreshold, ExactWhenSamplesCoverTheInput) {
  for (const int64_t n : {1, 2, 7, 1000, 65537}) {
    for (const Data kind : kAllKinds) {
      const auto x = make_data(n, kind, static_cast<uint32_t>(n));
      for (const int64_t target : {int64_t{1}, int64_t{2}, n / 3, n - 1, n}) {
        if (target < 1 || target > n) continue;
        const uint32_t expected = kth_largest_key(x, target);
        for (const int64_t samples : {n, n + 1, 10 * n}) {
          EXPECT_EQ(estimate_threshold(x.data(), n, target, samples, 5, 9), expected)
              << "n=" << n << " target=" << target << " samples=" << samples;
        }
      }
    }
  }
}

TEST(EstimateThreshold, SampleFollowsTheDocumentedPhiloxStream) {
  const int64_t n = 100003, samples = 777;
  const auto x = make_data(n, Data::kNormal, 4);
  const uint64_t key = philox_key(1, 2);
  for (const int64_t target : {int64_t{1}, int64_t{50}, int64_t{1000}, n / 2, n}) {
    std::vector<uint32_t> sample;
    for (int64_t j = 0; j < samples; ++j) {
      const uint32_t word = philox_block(key, 3, static_cast<uint64_t>(j) / 4).v[j % 4];
      sample.push_back(magnitude_key(x[uniform_below(word, static_cast<uint32_t>(n))]));
    }
    std::sort(sample.begin(), sample.end(), std::greater<>());
    const int64_t rank = std::clamp<int64_t>((target * samples + n - 1) / n, 1, samples);
    EXPECT_EQ(estimate_threshold(x.data(), n, target, samples, key, 3), sample[rank - 1])
        << "target=" << target;
  }
}

TEST(EstimateThreshold, SampledCountIsCloseToTarget) {
  // The input is sorted, so a sample that is not spread over the whole input misses badly.
  const int64_t n = 1000000, samples = 10000;
  const auto x = make_data(n, Data::kSorted, 8);
  const uint64_t key = philox_key(7, 1);
  // Relative sd of the count is about 1/sqrt(target * samples / n): 10% and 3.2% here.
  for (const auto& [target, tolerance] :
       {std::pair<int64_t, double>{10000, 0.4}, std::pair<int64_t, double>{100000, 0.13}}) {
    double mean_error = 0.0;
    for (uint64_t step = 0; step < 8; ++step) {
      const uint32_t t = estimate_threshold(x.data(), n, target, samples, key, step);
      const int64_t count = count_selected(x.data(), n, t, serial_runner());
      const double error = static_cast<double>(count - target) / static_cast<double>(target);
      EXPECT_LT(std::fabs(error), tolerance) << "target=" << target << " step=" << step;
      mean_error += error / 8.0;
    }
    // Rounding the sample rank up biases towards more, but only slightly.
    EXPECT_LT(std::fabs(mean_error), tolerance / 2) << "target=" << target;
  }
  // Deterministic per (key, step), different across steps.
  EXPECT_EQ(estimate_threshold(x.data(), n, 5000, samples, key, 4),
            estimate_threshold(x.data(), n, 5000, samples, key, 4));
  EXPECT_NE(estimate_threshold(x.data(), n, 5000, samples, key, 4),
            estimate_threshold(x.data(), n, 5000, samples, key, 5));
}

TEST(EstimateThreshold, RejectsBadArguments) {
  const std::vector<float> x(10, 1.0f);
  EXPECT_THROW(estimate_threshold(x.data(), 10, 0, 5, 1, 1), std::invalid_argument);
  EXPECT_THROW(estimate_threshold(x.data(), 10, 11, 5, 1, 1), std::invalid_argument);
  EXPECT_THROW(estimate_threshold(x.data(), 10, 3, 0, 1, 1), std::invalid_argument);
  EXPECT_THROW(estimate_threshold(x.data(), 0, 1, 5, 1, 1), std::invalid_argument);
}

struct Selected {
  std::vector<float> values;
  std::vector<int32_t> indices;
  int64_t passes = -1;
};

Selected approx(const std::vector<float>& x, int64_t k, int64_t samples, uint64_t key,
                uint64_t step, const TaskRunner& runner) {
  Selected out;
  out.values.assign(k, -3.0f);
  out.indices.assign(k, -7);
  out.passes = topk_approx_select(x.data(), static_cast<int64_t>(x.size()), k, samples, key, step,
                                  out.values.data(), out.indices.data(), runner);
  return out;
}

void expect_same_as_topk(const std::vector<float>& x, int64_t k, const Selected& got) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> values(k);
  std::vector<int32_t> indices(k);
  topk_select(x.data(), n, k, values.data(), indices.data(), serial_runner());
  ASSERT_EQ(got.indices, indices) << "n=" << n << " k=" << k << " passes=" << got.passes;
  for (int64_t i = 0; i < k; ++i) {
    ASSERT_TRUE(same_bits(got.values[i], values[i])) << "n=" << n << " k=" << k << " slot " << i;
  }
}

class TopKApproxSizes : public ::testing::TestWithParam<int64_t> {};

TEST_P(TopKApproxSizes, SelectsExactlyWhatTopKSelects) {
  const int64_t n = GetParam();
  testing::ThreadRunner threads(3);
  const int64_t samples = std::max<int64_t>(1, n / 100);
  int64_t passes[3] = {0, 0, 0};
  for (const Data kind : kAllKinds) {
    const auto x = make_data(n, kind, static_cast<uint32_t>(n) * 3 + 1);
    for (const int64_t k : {int64_t{1}, n, n / 100, n / 10}) {
      if (k < 1) continue;
      for (const TaskRunner* runner :
           {&serial_runner(), static_cast<const TaskRunner*>(&threads)}) {
        const auto got =
            approx(x, k, samples, philox_key(3, static_cast<uint64_t>(k)), 11, *runner);
        ASSERT_GE(got.passes, 0);
        ASSERT_LE(got.passes, 2);
        ++passes[got.passes];
        expect_same_as_topk(x, k, got);
      }
    }
    if (n >= 100003) {
      // With only ties, a threshold selects all n > 4k + 1024 elements: the exact select runs.
      if (kind == Data::kAllEqual || kind == Data::kAllZero) {
        EXPECT_EQ(approx(x, 7, samples, 1, 1, threads).passes, 2);
      }
      // Plain data with k = 1%: the first estimate works.
      if (kind == Data::kNormal || kind == Data::kSorted) {
        EXPECT_EQ(approx(x, n / 100, samples, 1, 1, threads).passes, 0);
      }
    }
  }
  if (n >= 1000) {
    EXPECT_GT(passes[0], 0) << "the sampled path never worked";
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, TopKApproxSizes, ::testing::Values(1, 2, 7, 1000, 100003, 1000000));

// The positions of words [first, first + count) of the documented sampling stream.
std::vector<int64_t> sampled_positions(int64_t n, uint64_t key, uint64_t step, uint64_t first,
                                       uint64_t count) {
  std::vector<int64_t> out;
  for (uint64_t w = first; w < first + count; ++w) {
    out.push_back(uniform_below(philox_block(key, step, w / 4).v[w % 4], static_cast<uint32_t>(n)));
  }
  return out;
}

TEST(TopKApprox, SecondEstimateAfterTooFewCandidates) {
  // The first sample sees only huge values, so its threshold selects too few; the second
  // sample comes from other words of the stream and is unaffected.
  const int64_t n = 1000000, k = 10000, samples = 2000;
  const uint64_t key = 77, step = 5;
  auto x = make_data(n, Data::kNormal, 12);
  for (const int64_t i : sampled_positions(n, key, step, 0, samples)) x[i] = -3e30f;
  testing::ThreadRunner threads(3);
  for (const TaskRunner* runner : {&serial_runner(), static_cast<const TaskRunner*>(&threads)}) {
    const auto got = approx(x, k, samples, key, step, *runner);
    EXPECT_EQ(got.passes, 1);
    expect_same_as_topk(x, k, got);
  }
}

TEST(TopKApprox, SecondEstimateAfterTooManyCandidates) {
  // The first sample sees only zeros: its threshold (0) selects all n.
  const int64_t n = 1000000, k = 1000, samples = 5000;
  const uint64_t key = 78, step = 6;
  auto x = make_data(n, Data::kNormal, 13);
  for (const int64_t i : sampled_positions(n, key, step, 0, samples)) x[i] = 0.0f;
  const auto got = approx(x, k, samples, key, step, testing::ThreadRunner(3));
  EXPECT_EQ(got.passes, 1);
  expect_same_as_topk(x, k, got);
}

TEST(TopKApprox, ExactSelectWhenBothEstimatesMiss) {
  const int64_t n = 1000000, k = 20000, samples = 1000;
  const uint64_t key = 79, step = 7;
  auto x = make_data(n, Data::kNormal, 14);
  // Both samples see only huge values, the second smaller ones: the second threshold is lower
  // and is counted, but still selects too few (at most 5 * samples < k).
  for (const int64_t i : sampled_positions(n, key, step, 0, samples)) x[i] = 3e30f;
  for (const int64_t i : sampled_positions(n, key, step, samples, 4 * samples)) x[i] = -2e20f;
  auto got = approx(x, k, samples, key, step, serial_runner());
  EXPECT_EQ(got.passes, 2);
  expect_same_as_topk(x, k, got);

  // Both samples see the same huge value: the second threshold cannot select more.
  for (const int64_t i : sampled_positions(n, key, step, 0, 5 * samples)) x[i] = 3e30f;
  got = approx(x, k, samples, key, step, serial_runner());
  EXPECT_EQ(got.passes, 2);
  expect_same_as_topk(x, k, got);
}

TEST(TopKApprox, FirstEstimateRarelyMissesOnNormalData) {
  const int64_t n = 1000000, samples = 10000;
  int misses = 0;
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto x = make_data(n, Data::kNormal, 1000 + seed);
    for (const int64_t k : {n / 1000, n / 100, n / 10}) {
      const auto got = approx(x, k, samples, philox_key(seed, 9), seed, serial_runner());
      misses += got.passes != 0;
      if (seed % 5 == 0) expect_same_as_topk(x, k, got);
    }
  }
  EXPECT_LE(misses, 1) << "of 60 selections";
}

TEST(TopKApprox, RejectsBadArguments) {
  const std::vector<float> x(10, 1.0f);
  std::vector<float> values(11);
  std::vector<int32_t> indices(11);
  const auto call = [&](int64_t n, int64_t k, int64_t samples) {
    topk_approx_select(x.data(), n, k, samples, 1, 1, values.data(), indices.data(),
                       serial_runner());
  };
  EXPECT_THROW(call(10, 0, 5), std::invalid_argument);
  EXPECT_THROW(call(10, 11, 5), std::invalid_argument);
  EXPECT_THROW(call(0, 1, 5), std::invalid_argument);
  EXPECT_THROW(call(10, 3, 0), std::invalid_argument);
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
