#include "compressors/error_feedback.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "compressors/registry.h"

namespace gradcomp {
namespace {

TEST(ErrorFeedback, SlotsAreKeyedByNameAndKeepTheirSize) {
  ErrorFeedback ef;
  const auto a = ef.slot("layer.weight", 10);
  const auto b = ef.slot("layer.bias", 2);
  EXPECT_NE(a, b);
  EXPECT_EQ(ef.slot("layer.weight", 10), a);
  EXPECT_THROW(ef.slot("layer.weight", 11), c10::ValueError);
  EXPECT_THROW(ef.slot("empty", 0), c10::ValueError);
}

TEST(ErrorFeedback, ResidualStartsAtZeroAndIsShared) {
  ErrorFeedback ef;
  const auto s = ef.slot("w", 5);
  auto r = ef.residual(s, at::kCPU);
  EXPECT_TRUE(at::equal(r, at::zeros({5})));
  r.fill_(2.0f);
  EXPECT_TRUE(at::equal(ef.residual(s, at::kCPU), at::full({5}, 2.0f)));
  EXPECT_DOUBLE_EQ(ef.squared_norm(), 20.0);
}

TEST(ErrorFeedback, StateDictRoundTripsAndValidates) {
  ErrorFeedback ef;
  ef.residual(ef.slot("w", 3), at::kCPU).copy_(at::tensor({1.0f, -2.0f, 3.0f}));
  const auto state = ef.state_dict();
  ErrorFeedback restored;
  restored.load_state_dict(state);
  EXPECT_TRUE(at::equal(restored.residual(restored.slot("w", 3), at::kCPU),
                        at::tensor({1.0f, -2.0f, 3.0f})));
  EXPECT_THROW(restored.slot("w", 4), c10::ValueError);
  EXPECT_THROW(restored.load_state_dict({{"x", at::ones({2}, at::kDouble)}}), c10::TypeError);
}

// The default compose-three-steps path and the fused Top-K path obey the same arithmetic:
// residual_after + D(payload) == residual_before + grad.
TEST(ErrorFeedback, CompressWithFeedbackConservesTheSum) {
  const auto topk = make_compressor("topk", {{"ratio", 0.05}});
  at::manual_seed(0);
  auto residual = at::randn({4000});
  const auto grad = at::randn({4000});
  const auto expected = residual + grad;
  auto payload = at::empty({topk->payload_numel(4000)}, at::kByte);
  topk->compress_with_feedback(grad, residual, payload, {});
  auto sent = at::zeros({4000});
  topk->decompress_add(payload, sent, {});
  EXPECT_TRUE(at::equal(sent + residual, expected));
  EXPECT_EQ((sent != 0).sum().item<int64_t>(), 200);
}

}  // namespace
}  // namespace gradcomp
