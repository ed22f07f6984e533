#include "compressors/registry.h"

#include <ATen/ATen.h>
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
      {"topk", {{"min_k", -1}}},
      {"topk_int8", {{"min_k", 0.5}}},
      {"topk_bitmap", {{"ratio", 0}}},
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

TEST(TopKCompressor, MinKIsAPerTensorFloor) {
  EXPECT_EQ(TopKCompressor::k_for(0.01, 4096, 256), 256);
  EXPECT_EQ(TopKCompressor::k_for(0.01, 100, 256), 100);  // never more than the tensor
  EXPECT_EQ(TopKCompressor::k_for(0.5, 4096, 256), 2048);
  EXPECT_EQ(make_compressor("topk", {{"min_k", 64}})->spec(), "topk:ratio=0.01,min_k=64");
  EXPECT_EQ(make_compressor("topk", {{"min_k", 64}})->payload_bytes(4096), 8 * 64);
}

TEST(TopKBitmapCompressor, SendsWhatTopKInt8SendsInFewerBytes) {
  const auto bitmap = make_compressor("topk_bitmap", {{"ratio", 0.1}});
  const auto listed = make_compressor("topk_int8", {{"ratio", 0.1}});
  const int64_t n = 1001;  // not a multiple of 8: the bitmap's last byte is partial
  EXPECT_EQ(bitmap->payload_bytes(n), 4 + 126 + 101);
  EXPECT_LT(bitmap->payload_bytes(n), listed->payload_bytes(n));
  at::manual_seed(3);
  const auto grad = at::randn({n});
  auto residual_a = at::randn({n}), residual_b = residual_a.clone();
  auto payload_a = at::empty({bitmap->payload_numel(n)}, at::kByte);
  auto payload_b = at::empty({listed->payload_numel(n)}, at::kByte);
  const CompressContext ctx;
  bitmap->compress_with_feedback(grad, residual_a, payload_a, ctx);
  listed->compress_with_feedback(grad, residual_b, payload_b, ctx);
  EXPECT_TRUE(at::equal(residual_a, residual_b));
  auto out_a = at::zeros({n}), out_b = at::zeros({n});
  bitmap->decompress_add(payload_a, out_a, ctx);
  listed->decompress_add(payload_b, out_b, ctx);
  EXPECT_TRUE(at::equal(out_a, out_b));
  EXPECT_EQ(out_a.ne(0).sum().item<int64_t>(), 101);
  // A corrupt bitmap (one bit too many) is refused, naming the count.
  payload_a[4] = static_cast<uint8_t>(0xff);
  payload_a[5] = static_cast<uint8_t>(0xff);
  EXPECT_THROW(bitmap->decompress_add(payload_a, out_a, ctx), c10::Error);
}

}  // namespace
}  // namespace gradcomp
