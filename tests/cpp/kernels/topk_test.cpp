#include "kernels/cpu/topk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

uint32_t magnitude_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & 0x7fffffffu;
}

// Brute force: stable sort by magnitude key (descending), keep k, return in index order.
std::vector<int32_t> reference_topk(const std::vector<float>& x, int64_t k) {
  std::vector<int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return magnitude_bits(x[a]) > magnitude_bits(x[b]);
  });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

enum class Data { kNormal, kFewValues, kAllEqual, kAllZero };

std::vector<float> make_data(int64_t n, Data kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> few(-3, 3);
  std::vector<float> x(n);
  for (auto& v : x) {
    switch (kind) {
      case Data::kNormal:
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
    }
  }
  return x;
}

void expect_matches_reference(const std::vector<float>& x, int64_t k, const TaskRunner& runner) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> values(k, std::numeric_limits<float>::quiet_NaN());
  std::vector<int32_t> indices(k, -7);  // poisoned: an unwritten slot is caught
  topk_select(x.data(), n, k, values.data(), indices.data(), runner);
  const auto expected = reference_topk(x, k);
  ASSERT_EQ(indices, expected) << "n=" << n << " k=" << k;
  for (int64_t i = 0; i < k; ++i) {
    ASSERT_EQ(std::memcmp(&values[i], &x[indices[i]], sizeof(float)), 0) << "slot " << i;
  }
}

class TopKSizes : public ::testing::TestWithParam<int64_t> {};

TEST_P(TopKSizes, MatchesBruteForceForManyK) {
  const int64_t n = GetParam();
  testing::ThreadRunner threads(3);
  std::vector<int64_t> ks{1, 2, n / 100, n / 10, n / 2, n - 1, n};
  for (const Data kind : {Data::kNormal, Data::kFewValues}) {
    const auto x = make_data(n, kind, static_cast<uint32_t>(n));
    for (const int64_t k : ks) {
      if (k < 1 || k > n) continue;
      expect_matches_reference(x, k, serial_runner());
      expect_matches_reference(x, k, threads);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, TopKSizes,
                         ::testing::Values(1, 2, 3, 7, 64, 1000, 32767, 65537, 100003, 1000000));

TEST(TopK, EveryKOnSmallInput) {
  const auto x = make_data(97, Data::kFewValues, 5);
  for (int64_t k = 1; k <= 97; ++k) expect_matches_reference(x, k, serial_runner());
}

TEST(TopK, AllEqualAndAllZeroTakeLowestIndices) {
  testing::ThreadRunner threads(4);
  for (const Data kind : {Data::kAllEqual, Data::kAllZero}) {
    const auto x = make_data(200000, kind, 1);
    for (const int64_t k : {1, 777, 199999}) expect_matches_reference(x, k, threads);
  }
}

TEST(TopK, NegativeZeroEqualsPositiveZero) {
  const std::vector<float> x{0.0f, -0.0f, 0.0f, -0.0f};
  std::vector<float> values(2);
  std::vector<int32_t> indices(2);
  topk_select(x.data(), 4, 2, values.data(), indices.data(), serial_runner());
  EXPECT_EQ(indices, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(std::signbit(values[1]));  // the sign travels with the value
}

TEST(TopK, NanAboveInfAboveFinite) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x{1.0f, -inf, 1e30f, nan, -2.0f, inf};
  std::vector<float> values(3);
  std::vector<int32_t> indices(3);
  topk_select(x.data(), 6, 3, values.data(), indices.data(), serial_runner());
  EXPECT_EQ(indices, (std::vector<int32_t>{1, 3, 5}));
  EXPECT_TRUE(std::isnan(values[1]));
  EXPECT_EQ(values[0], -inf);
}

TEST(TopK, ResultDoesNotDependOnThreadCount) {
  const auto x = make_data(500000, Data::kFewValues, 9);
  std::vector<int32_t> first;
  for (int threads : {1, 2, 5, 8}) {
    testing::ThreadRunner runner(threads);
    std::vector<float> values(4321);
    std::vector<int32_t> indices(4321);
    topk_select(x.data(), 500000, 4321, values.data(), indices.data(), runner);
    if (first.empty()) first = indices;
    EXPECT_EQ(indices, first) << threads << " threads";
  }
}

TEST(TopK, RejectsBadSizes) {
  std::vector<float> x(4, 1.0f), values(5);
  std::vector<int32_t> indices(5);
  EXPECT_THROW(topk_select(x.data(), 4, 0, values.data(), indices.data(), serial_runner()),
               std::invalid_argument);
  EXPECT_THROW(topk_select(x.data(), 4, 5, values.data(), indices.data(), serial_runner()),
               std::invalid_argument);
  EXPECT_THROW(topk_select(x.data(), 0, 1, values.data(), indices.data(), serial_runner()),
               std::invalid_argument);
}

// Error-feedback arithmetic: the fused kernel adds grad into the residual, sends the top k of
// the sum, and leaves exactly the unsent part behind.
TEST(TopKCompensated, ResidualHoldsWhatWasNotSent) {
  testing::ThreadRunner threads(3);
  const int64_t n = 300001, k = 3000;
  auto residual = make_data(n, Data::kNormal, 11);
  const auto grad = make_data(n, Data::kNormal, 12);
  std::vector<float> compensated(n);
  for (int64_t i = 0; i < n; ++i) compensated[i] = residual[i] + grad[i];

  std::vector<float> values(k);
  std::vector<int32_t> indices(k);
  topk_select_compensated(residual.data(), grad.data(), n, k, values.data(), indices.data(),
                          threads);
  EXPECT_EQ(indices, reference_topk(compensated, k));
  std::vector<float> rebuilt = residual;  // residual + sent == compensated, exactly
  for (int64_t i = 0; i < k; ++i) {
    EXPECT_EQ(residual[indices[i]], 0.0f);
    rebuilt[indices[i]] += values[i];
  }
  EXPECT_EQ(std::memcmp(rebuilt.data(), compensated.data(), n * sizeof(float)), 0);
}

TEST(TopKCompensated, NullGradSelectsFromResidualAlone) {
  auto residual = make_data(1000, Data::kNormal, 3);
  const auto original = residual;
  std::vector<float> values(10);
  std::vector<int32_t> indices(10);
  topk_select_compensated(residual.data(), nullptr, 1000, 10, values.data(), indices.data(),
                          serial_runner());
  EXPECT_EQ(indices, reference_topk(original, 10));
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(values[i], original[indices[i]]);
}

TEST(TopKCompensated, ManyStepsConserveTheGradientSum) {
  // sum of grads == sum of everything sent + final residual (to float rounding).
  const int64_t n = 5000, k = 50;
  std::vector<float> residual(n, 0.0f);
  std::vector<double> grad_sum(n, 0.0), sent_sum(n, 0.0);
  std::vector<float> values(k);
  std::vector<int32_t> indices(k);
  for (uint32_t step = 0; step < 100; ++step) {
    const auto grad = make_data(n, Data::kNormal, 100 + step);
    for (int64_t i = 0; i < n; ++i) grad_sum[i] += grad[i];
    topk_select_compensated(residual.data(), grad.data(), n, k, values.data(), indices.data(),
                            serial_runner());
    for (int64_t i = 0; i < k; ++i) sent_sum[indices[i]] += values[i];
  }
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(sent_sum[i] + residual[i], grad_sum[i], 1e-4) << "element " << i;
  }
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
