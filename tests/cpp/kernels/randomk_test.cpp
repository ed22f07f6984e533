#include "kernels/cpu/randomk.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/common/philox.h"
#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

std::vector<int32_t> draw(int64_t n, int64_t k, uint64_t key, uint64_t step,
                          const TaskRunner& runner = serial_runner()) {
  std::vector<int32_t> indices(k, -1);
  randomk_indices(n, k, key, step, indices.data(), runner);
  return indices;
}

TEST(Philox, MatchesPublishedKnownAnswer) {
  // Random123's kat_vectors: philox4x32_10, counter = key = 0.
  const Philox4 zero = philox4x32(0, 0, 0, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  // counter = 0xffffffff x4, key = 0xffffffff x2.
  const Philox4 ones = philox4x32(~0ull, ~0u, ~0u, ~0u, ~0u);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
}

TEST(RandomK, OneDistinctIndexPerBlockAscending) {
  for (const int64_t n : {1, 2, 7, 1000, 100003}) {
    for (const int64_t k : {int64_t{1}, (n + 1) / 2, n}) {
      const auto idx = draw(n, k, 42, 3);
      for (int64_t i = 0; i < k; ++i) {
        EXPECT_GE(idx[i], randomk_block_begin(n, k, i)) << "n=" << n << " k=" << k;
        EXPECT_LT(idx[i], randomk_block_begin(n, k, i + 1)) << "n=" << n << " k=" << k;
      }
    }
  }
}

TEST(RandomK, KEqualsNSelectsEverything) {
  const auto idx = draw(513, 513, 7, 0);
  for (int32_t i = 0; i < 513; ++i) EXPECT_EQ(idx[i], i);
}

TEST(RandomK, DeterministicPerKeyAndStepAndIndependentOfThreads) {
  const testing::ThreadRunner threads(3);
  const int64_t n = 1 << 22, k = 1 << 16;
  const auto a = draw(n, k, 11, 5);
  EXPECT_EQ(a, draw(n, k, 11, 5, threads));
  EXPECT_NE(a, draw(n, k, 11, 6));
  EXPECT_NE(a, draw(n, k, 12, 5));
}

TEST(RandomK, PositionsWithinBlocksAreUniform) {
  // 8 blocks of 4: over many steps each offset inside a block is drawn about equally often.
  const int64_t n = 32, k = 8, steps = 20000;
  std::vector<int64_t> hits(4, 0);
  for (int64_t step = 0; step < steps; ++step) {
    for (const int32_t i : draw(n, k, 99, step)) ++hits[i % 4];
  }
  const double expected = static_cast<double>(steps * k) / 4;
  for (const int64_t h : hits) EXPECT_NEAR(h, expected, 5 * std::sqrt(expected));
}

TEST(RandomK, GatherScalesByBlockSizeWhenUnbiased) {
  const int64_t n = 10, k = 3;  // blocks [0,3) [3,6) [6,10)
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i) + 0.5f;
  const auto idx = draw(n, k, 1, 1);
  std::vector<float> plain(k), scaled(k);
  randomk_gather(x.data(), n, k, idx.data(), false, plain.data(), serial_runner());
  randomk_gather(x.data(), n, k, idx.data(), true, scaled.data(), serial_runner());
  const float sizes[] = {3, 3, 4};
  for (int64_t i = 0; i < k; ++i) {
    EXPECT_EQ(plain[i], x[idx[i]]);
    EXPECT_EQ(scaled[i], x[idx[i]] * sizes[i]);
  }
}

TEST(RandomK, UnbiasedEstimateConvergesToInput) {
  const int64_t n = 12, k = 5, steps = 40000;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 5) - 2.0f;
  std::vector<double> mean(n, 0.0);
  std::vector<float> values(k);
  for (int64_t step = 0; step < steps; ++step) {
    const auto idx = draw(n, k, 5, step);
    randomk_gather(x.data(), n, k, idx.data(), true, values.data(), serial_runner());
    for (int64_t i = 0; i < k; ++i) mean[idx[i]] += values[i] / static_cast<double>(steps);
  }
  // Each estimate is x * size with probability 1 / size: std <= |x| * sqrt(size - 1) / sqrt(steps).
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(mean[i], x[i], 5 * 2.0 * 2.0 / std::sqrt(steps));
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
