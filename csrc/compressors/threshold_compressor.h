// Threshold sparsification: sends every element with |x| >= tau, as (value, index) pairs.
// tau is fixed ("threshold:tau=1e-3") or estimated each step from a sample so that about
// density * numel elements pass ("threshold:density=0.01", the default). Payload sizes differ
// between ranks and steps: an 8-byte header (int32 count, 4 zero bytes), count float32 values,
// count int32 indices. A rank with nothing above tau sends the header alone.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class ThresholdCompressor final : public Compressor {
 public:
  // tau > 0: fixed threshold; tau == 0: adapt to `density`.
  ThresholdCompressor(double tau, double density);
  static std::unique_ptr<Compressor> create(const Options& options);

  std::string name() const override { return "threshold"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  bool variable_size() const override { return true; }
  // The largest payload: every element selected.
  int64_t payload_numel(int64_t numel) const override { return 8 + 8 * numel; }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  // The estimate's sample size and the count it aims at, for a tensor of n elements.
  int64_t target(int64_t n) const;
  int64_t samples(int64_t n) const;
  uint32_t threshold_key(const float* x, int64_t n, const CompressContext& ctx) const;
  // Selects from x into payload; returns the count.
  int64_t encode(const float* x, int64_t n, const at::Tensor& payload,
                 const CompressContext& ctx) const;
  // The same on CUDA (waits for the device once, for the count); returns the selected indices.
  at::Tensor encode_cuda(const at::Tensor& x, const at::Tensor& payload,
                         const CompressContext& ctx) const;

  double tau_;
  double density_;
};

}  // namespace gradcomp
