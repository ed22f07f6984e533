#include "kernels/cpu/sparse.h"

#include <gtest/gtest.h>

#include <vector>

namespace gradcomp::kernels::cpu {
namespace {

TEST(SparseAccumulate, AddsAtIndicesAndAccumulatesRepeats) {
  std::vector<float> out{1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<float> values{2.0f, 3.0f, 4.0f};
  const std::vector<int32_t> indices{3, 0, 3};
  EXPECT_EQ(sparse_accumulate(values.data(), indices.data(), 3, out.data(), 4), -1);
  EXPECT_EQ(out, (std::vector<float>{4.0f, 1.0f, 1.0f, 7.0f}));
}

TEST(SparseAccumulate, OutOfRangeIndexIsReportedAndNothingIsWritten) {
  for (const int32_t bad : {-1, 4, 2147483647}) {
    std::vector<float> out(4, 0.0f);
    const std::vector<float> values{1.0f, 1.0f};
    const std::vector<int32_t> indices{1, bad};
    EXPECT_EQ(sparse_accumulate(values.data(), indices.data(), 2, out.data(), 4), 1);
    EXPECT_EQ(out, std::vector<float>(4, 0.0f)) << "index " << bad;
  }
}

TEST(SparseAccumulate, EmptyPayloadIsANoOp) {
  std::vector<float> out(2, 5.0f);
  EXPECT_EQ(sparse_accumulate(nullptr, nullptr, 0, out.data(), 2), -1);
  EXPECT_EQ(out, std::vector<float>(2, 5.0f));
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
