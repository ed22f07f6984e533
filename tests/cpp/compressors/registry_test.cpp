#include "compressors/registry.h"

#include <gtest/gtest.h>

#include "compressors/topk_compressor.h"

namespace gradcomp {
namespace {

TEST(Registry, KnowsBuiltInNames) {
  const auto names = compressor_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "topk"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "none"), names.end());
  EXPECT_EQ(make_compressor("topk", {{"ratio", 0.25}})->spec(), "topk:ratio=0.25");
  EXPECT_EQ(make_compressor("none", {})->collective(), Collective::kAllReduce);
}

TEST(Registry, RejectsUnknownNamesAndOptions) {
  EXPECT_THROW(make_compressor("topq", {}), c10::ValueError);
  EXPECT_THROW(make_compressor("topk", {{"raito", 0.1}}), c10::ValueError);
  EXPECT_THROW(make_compressor("none", {{"ratio", 0.1}}), c10::ValueError);
  for (const double bad : {0.0, -0.5, 1.5}) {
    EXPECT_THROW(make_compressor("topk", {{"ratio", bad}}), c10::ValueError) << bad;
  }
}

TEST(TopKCompressor, KIsCeilOfRatioTimesNumelClamped) {
  EXPECT_EQ(TopKCompressor::k_for(0.01, 1), 1);
  EXPECT_EQ(TopKCompressor::k_for(0.01, 100), 1);
  EXPECT_EQ(TopKCompressor::k_for(0.01, 101), 2);
  EXPECT_EQ(TopKCompressor::k_for(1.0, 77), 77);
  EXPECT_EQ(TopKCompressor(0.01).payload_bytes(1000000), 8 * 10000);
}

}  // namespace
}  // namespace gradcomp
