#include "compressors/registry.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

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

TEST(Registry, EveryMethodBuildsWithDefaultsAndRoundTripsItsSpec) {
  for (const auto& name : compressor_names()) {
    const auto method = make_method(name, {});
    EXPECT_EQ(method->name(), name);
    // The canonical spec builds the same method again.
    EXPECT_EQ(make_method_from_spec(method->spec())->spec(), method->spec()) << name;
  }
  EXPECT_EQ(make_method_from_spec("qsgd:bits=8, chunk=64")->spec(), "qsgd:bits=8,chunk=64");
  EXPECT_EQ(make_method_from_spec(" powersgd:rank=4")->spec(), "powersgd:rank=4,min_compression=2");
}

TEST(Registry, PowerSgdIsNotAPerTensorCompressor) {
  EXPECT_EQ(make_method("powersgd", {})->collective(), Collective::kLowRank);
  EXPECT_THROW(make_compressor("powersgd", {}), c10::ValueError);
}

TEST(Registry, RejectsMalformedSpecsAndBadOptionValues) {
  for (const char* spec : {"", ":", "topk:", "topk:ratio", "topk:ratio=", "topk:ratio=x",
                           "topk:ratio=0.1,ratio=0.2", "topk:=1"}) {
    EXPECT_THROW(make_method_from_spec(spec), c10::ValueError) << spec;
  }
  const std::vector<std::pair<std::string, Options>> bad{
      {"qsgd", {{"bits", 3}}},
      {"qsgd", {{"bits", 4.5}}},
      {"qsgd", {{"chunk", 12}}},
      {"sign", {{"chunk", 0}}},
      {"int8", {{"chunk", -8}}},
      {"randomk", {{"unbiased", 2}}},
      {"randomk", {{"ratio", 0}}},
      {"threshold", {{"tau", -1}}},
      {"threshold", {{"density", 0}}},
      {"threshold", {{"tau", 1}, {"density", 0.1}}},
      {"powersgd", {{"rank", 0}}},
      {"powersgd", {{"rank", 2.5}}},
      {"powersgd", {{"min_compression", 0.5}}},
      {"topk_approx", {{"sample_ratio", 0}}},
      {"fp16", {{"ratio", 0.1}}},
      {"topk_int8", {{"ratio", 2}}},
  };
  for (const auto& [name, options] : bad) {
    EXPECT_THROW(make_method(name, options), c10::ValueError) << name;
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
