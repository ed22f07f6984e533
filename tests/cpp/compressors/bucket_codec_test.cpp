#include "compressors/bucket_codec.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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
  EXPECT_EQ(codec.channels()[0].numel, 1 + 10);  // the non-finite flag, then the bias
  EXPECT_EQ(codec.channels()[1].collective, Collective::kAllGather);
  EXPECT_EQ(codec.channels()[1].numel, 8 * 10 + 8 * 4);
  EXPECT_EQ(codec.bytes_sent(), 44 + 112);
  EXPECT_EQ(codec.dense_bytes(), 4 * 1343);
}

TEST(BucketCodec, LosslessRoundTripAveragesOverRanks) {
  // Two simulated ranks with ratio 1: the decoded bucket is the mean of the two buckets.
  auto ef = std::make_shared<ErrorFeedback>();
  const auto topk = make_compressor("topk", {{"ratio", 1.0}});
  BucketCodec rank0(topk, layout(), ef, 0, 0, 2), rank1(topk, layout(), ef, 0, 1, 2);
  at::manual_seed(1);
  auto g0 = at::randn({1343}), g1 = at::randn({1343});
  const auto m0 = rank0.encode(g0, 0), m1 = rank1.encode(g1, 0);
  std::vector<at::Tensor> received{m0[0] + m1[0], at::cat({m0[1], m1[1]})};
  auto out = at::empty({1343});
  rank0.decode(out, received, 0);
  EXPECT_TRUE(at::allclose(out, (g0 + g1) / 2, 0, 0));
  EXPECT_EQ(ef->size(), 0);  // lossless: no residuals kept
}

TEST(BucketCodec, EncodeReusesItsBuffersAndGathersIntoItsOwn) {
  BucketCodec codec(make_compressor("topk", {{"ratio", 0.1}}), layout(), nullptr, 0, 0, 2);
  const auto first = codec.encode(at::randn({1343}), 0);
  const auto second = codec.encode(at::randn({1343}), 1);
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].data_ptr(), second[i].data_ptr()) << "channel " << i;
  }
  const auto gathered = codec.gather_buffer(1);
  EXPECT_EQ(gathered.numel(), 2 * codec.channels()[1].numel);
  EXPECT_EQ(codec.gather_buffer(1).data_ptr(), gathered.data_ptr());
  EXPECT_THROW(codec.gather_buffer(0), c10::ValueError);  // an allreduce: no gather buffer
  EXPECT_THROW(codec.gather_buffer(2), c10::ValueError);
}

TEST(BucketCodec, AllDenseOnlyWhenNothingIsCompressed) {
  EXPECT_TRUE(BucketCodec(make_compressor("none", {}), layout(), nullptr, 0).all_dense());
  EXPECT_FALSE(
      BucketCodec(make_compressor("topk", {{"ratio", 0.1}}), layout(), nullptr, 0).all_dense());
  EXPECT_TRUE(
      BucketCodec(make_compressor("topk", {{"ratio", 0.1}}), {{"b", 0, 10, false}}, nullptr, 0)
          .all_dense());
  // Lossless but not the values themselves: still the codec's path.
  EXPECT_FALSE(
      BucketCodec(make_compressor("randomk", {{"ratio", 1.0}}), layout(), nullptr, 0).all_dense());
}

TEST(BucketCodec, ScaleRatioMultipliesTheResidualsBeforeTheGradientIsAdded) {
  // The loss scale doubled: a residual r becomes 2 r + g before compression, whether computed
  // by the codec from a ratio or by scaling the residuals by hand first.
  const auto topk = make_compressor("topk", {{"ratio", 0.1}});
  auto by_ratio = std::make_shared<ErrorFeedback>(), by_hand = std::make_shared<ErrorFeedback>();
  BucketCodec a(topk, layout(), by_ratio, 0), b(topk, layout(), by_hand, 0);
  at::manual_seed(4);
  const auto g0 = at::randn({1343}), g1 = at::randn({1343});
  a.encode(g0.clone(), 0);
  b.encode(g0.clone(), 0);
  const auto ma = a.encode(g1.clone(), 1, false, at::full({1}, 2.0f));
  by_hand->scale(2.0);
  const auto mb = b.encode(g1.clone(), 1);
  for (size_t i = 0; i < ma.size(); ++i) EXPECT_TRUE(at::equal(ma[i], mb[i])) << i;
  for (const auto& [name, residual] : by_ratio->state_dict()) {
    EXPECT_TRUE(at::equal(residual, by_hand->state_dict().at(name))) << name;
  }
  EXPECT_THROW(a.encode(g1.clone(), 2, false, at::full({2}, 2.0f)), c10::ValueError);
  EXPECT_THROW(a.encode(g1.clone(), 2, false, at::full({1}, 2.0, at::kDouble)), c10::ValueError);
}

TEST(BucketCodec, NoneSendsEverythingInOneAllreduce) {
  BucketCodec codec(make_compressor("none", {}), layout(), nullptr, 0);
  ASSERT_EQ(codec.channels().size(), 1u);
  EXPECT_EQ(codec.bytes_sent(), codec.dense_bytes() + 4);  // + the non-finite flag
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
  // The 8-byte flag slot, then 10 values and 10 int32 indices; point the first index outside.
  m[0].narrow(0, 8 + 40, 4).copy_(at::tensor({0xff, 0xff, 0xff, 0x7f}, at::kByte));
  EXPECT_THROW(codec.decode(bucket, m, 0), c10::IndexError);
}

TEST(BucketCodec, NonFiniteOnOneRankMakesEveryRankNanAndKeepsItsResiduals) {
  // Two simulated ranks; rank 1's gradient holds an inf.
  auto ef0 = std::make_shared<ErrorFeedback>(), ef1 = std::make_shared<ErrorFeedback>();
  const auto topk = make_compressor("topk", {{"ratio", 0.1}});
  BucketCodec rank0(topk, layout(), ef0, 0, 0, 2), rank1(topk, layout(), ef1, 0, 1, 2);
  at::manual_seed(2);
  auto g0 = at::randn({1343}), g1 = at::randn({1343});
  // One finite step first, so that both ranks hold residuals.
  auto m0 = rank0.encode(g0.clone(), 0), m1 = rank1.encode(g1.clone(), 0);
  const auto kept1 = ef1->state_dict();
  g1[500] = std::numeric_limits<float>::infinity();
  m0 = rank0.encode(g0.clone(), 1);
  m1 = rank1.encode(g1.clone(), 1);
  // The flag is the first element of channel 0, here the fp32 allreduce: rank 1 raised it.
  EXPECT_EQ(m1[0][0].item<float>(), 1.0f);
  EXPECT_EQ(m0[0][0].item<float>(), 0.0f);
  std::vector<at::Tensor> received{m0[0] + m1[0], at::cat({m0[1], m1[1]})};
  for (auto* codec : {&rank0, &rank1}) {
    auto out = at::zeros({1343});
    EXPECT_EQ(codec->decode(out, {received[0].clone(), received[1].clone()}, 1),
              DecodeOutcome::kNonFinite);
    EXPECT_TRUE(out.isnan().all().item<bool>());
  }
  // Rank 1 kept its residuals exactly; rank 0's stay finite.
  for (const auto& [name, residual] : ef1->state_dict()) {
    EXPECT_TRUE(at::equal(residual, kept1.at(name))) << name;
  }
  EXPECT_TRUE(std::isfinite(ef0->squared_norm()));
}

TEST(BucketCodec, EntriesWithDifferentMethodsShareChannelsByHowTheyTravel) {
  std::vector<std::shared_ptr<const Compressor>> methods{
      make_compressor("topk", {{"ratio", 0.01}}), make_compressor("topk", {{"ratio", 0.1}}),
      make_compressor("randomk", {{"ratio", 0.1}})};
  std::vector<BucketEntry> entries{{"a", 0, 1000, true, 0, 0},
                                   {"b", 1000, 1000, true, 0, 1},
                                   {"c", 2000, 1000, true, 0, 2},
                                   {"d", 3000, 10, false}};
  auto ef = std::make_shared<ErrorFeedback>();
  BucketCodec codec(methods, entries, ef, 0, 0, 1);
  // fp32 allreduce: flag + Random-K's 100 values + the dense 10; one byte allgather for both
  // Top-Ks.
  ASSERT_EQ(codec.channels().size(), 2u);
  EXPECT_EQ(codec.channels()[0].numel, 1 + 100 + 10);
  EXPECT_EQ(codec.channels()[1].numel, 8 * 10 + 8 * 100);
  at::manual_seed(3);
  const auto g = at::randn({3010});
  auto messages = codec.encode(g.clone(), 0);
  auto out = at::zeros({3010});
  EXPECT_EQ(codec.decode(out, messages, 0), DecodeOutcome::kFinite);
  // Each entry kept what its own method selects: k = 10, 100 and 100 nonzeros.
  EXPECT_EQ(out.narrow(0, 0, 1000).ne(0).sum().item<int64_t>(), 10);
  EXPECT_EQ(out.narrow(0, 1000, 1000).ne(0).sum().item<int64_t>(), 100);
  EXPECT_EQ(out.narrow(0, 2000, 1000).ne(0).sum().item<int64_t>(), 100);
  EXPECT_TRUE(at::equal(out.narrow(0, 3000, 10), g.narrow(0, 3000, 10)));
  EXPECT_THROW(BucketCodec(methods, {{"x", 0, 10, true, 0, 3}}, nullptr, 0), c10::ValueError);
}

}  // namespace
}  // namespace gradcomp
