// Random-K: k = max(ceil(ratio * numel), min_k) elements at indices drawn from Philox(seed, step,
// parameter), one per stratum (kernels/cpu/randomk.h). Every rank draws the same indices, so
// only the k float32 values travel, and they are summed by the dense allreduce.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class RandomKCompressor final : public Compressor {
 public:
  RandomKCompressor(double ratio, bool unbiased, int64_t min_k = 0);
  static std::unique_ptr<Compressor> create(const Options& options);

  std::string name() const override { return "randomk"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllReduce; }
  at::ScalarType payload_dtype() const override { return at::kFloat; }
  int64_t payload_numel(int64_t numel) const override;
  bool lossless() const override { return ratio_ >= 1.0 && !unbiased_; }
  DeviceEncoding device_encoding(int64_t numel) const override;
  // Values are scaled by their stratum size (~numel / k), so D(C(x)) is unbiased for x.
  bool unbiased() const { return unbiased_; }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  // residual += grad; send residual at the drawn indices; subtract what was sent there.
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  std::vector<int32_t> draw(int64_t numel, const CompressContext& ctx) const;

  double ratio_;
  bool unbiased_;
  int64_t min_k_;
};

}  // namespace gradcomp
