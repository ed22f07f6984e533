#include "compressors/bucket_codec.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "compressors/registry.h"

namespace gradcomp {
namespace {

std::vector<BucketEntry> layout() {
  // A bias below the size cut, then two compressed matrices.
  return {{"a.bias", 0, 10, false}, {"a.weight", 10, 1000, true}, {"b.weight", 1010, 333, true}};
}

TEST(BucketCodec, ChannelsAndBytes) {
  BucketCodec codec(make_compressor("topk", {{"ratio", 0.01}}), layout(), nullptr, 0);
  ASSERT_EQ(codec.channels().size(), 2u);
  EXPECT_EQ(codec.channels()[0].collective, Collective::kAllReduce);
  EXPECT_EQ(codec.channels()[0].numel, 10);
  EXPECT_EQ(codec.channels()[1].collective, Collective::kAllGather);
  EXPECT_EQ(codec.channels()[1].numel, 8 * 10 + 8 * 4);
  EXPECT_EQ(codec.bytes_sent(), 40 + 112);
  EXPECT_EQ(codec.dense_bytes(), 4 * 1343);
}

TEST(BucketCodec, LosslessRoundTripAveragesOverRanks) {
  // Two simulated ranks with ratio 1: the decoded bucket is the mean of the two buckets.
  auto ef = std::make_shared<ErrorFeedback>();
  BucketCodec codec(make_compressor("topk", {{"ratio", 1.0}}), layout(), ef, 0, 0, 2);
  at::manual_seed(1);
  auto g0 = at::randn({1343}), g1 = at::randn({1343});
  const auto m0 = codec.encode(g0, 0), m1 = codec.encode(g1, 0);
  std::vector<at::Tensor> received{m0[0] + m1[0], at::cat({m0[1], m1[1]})};
  auto out = at::empty({1343});
  codec.decode(out, received, 0);
  EXPECT_TRUE(at::allclose(out, (g0 + g1) / 2, 0, 0));
  EXPECT_EQ(ef->size(), 0);  // lossless: no residuals kept
}

TEST(BucketCodec, NoneSendsEverythingInOneAllreduce) {
  BucketCodec codec(make_compressor("none", {}), layout(), nullptr, 0);
  ASSERT_EQ(codec.channels().size(), 1u);
  EXPECT_EQ(codec.bytes_sent(), codec.dense_bytes());
}

TEST(BucketCodec, RejectsWrongReceivedShapes) {
  BucketCodec codec(make_compressor("topk", {{"ratio", 0.1}}), layout(), nullptr, 0, 1, 2);
  auto bucket = at::randn({1343});
  const auto m = codec.encode(bucket, 0);
  EXPECT_THROW(codec.decode(bucket, {m[0]}, 0), c10::ValueError);
  EXPECT_THROW(codec.decode(bucket, {m[0], m[1]}, 0), c10::ValueError);  // gather needs 2x
  EXPECT_THROW(codec.encode(at::randn({100}), 0), c10::ValueError);
}

TEST(BucketCodec, CorruptIndexRaisesInsteadOfWriting) {
  BucketCodec codec(make_compressor("topk", {{"ratio", 0.1}}), {{"w", 0, 100, true}}, nullptr, 0);
  auto bucket = at::randn({100});
  auto m = codec.encode(bucket, 0);
  // Payload: 10 values then 10 int32 indices; point the first index far outside.
  m[0].narrow(0, 40, 4).copy_(at::tensor({0xff, 0xff, 0xff, 0x7f}, at::kByte));
  EXPECT_THROW(codec.decode(bucket, m, 0), c10::IndexError);
}

}  // namespace
}  // namespace gradcomp
