// Exact magnitude Top-K: k = ceil(ratio * numel) largest-|x| elements as (value, index) pairs.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class TopKCompressor final : public Compressor {
 public:
  explicit TopKCompressor(double ratio);
  static std::unique_ptr<Compressor> create(const Options& options);

  // k = ceil(ratio * numel), clamped to [1, numel].
  static int64_t k_for(double ratio, int64_t numel);

  std::string name() const override { return "topk"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  // k float32 values followed by k int32 indices.
  int64_t payload_numel(int64_t numel) const override { return 8 * k_for(ratio_, numel); }
  bool lossless() const override { return ratio_ >= 1.0; }
  double ratio() const { return ratio_; }

 protected:
  void do_compress(const at::Tensor& input, const at::Tensor& payload,
                   const CompressContext& ctx) const override;
  void do_decompress_add(const at::Tensor& payload, const at::Tensor& out) const override;
  void do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                 const at::Tensor& payload,
                                 const CompressContext& ctx) const override;

 private:
  double ratio_;
};

// Decodes a Top-K payload of k pairs into out (out[index] += value), validating every index.
void topk_payload_accumulate(const float* values, const int32_t* indices, int64_t k,
                             const at::Tensor& out);

}  // namespace gradcomp
