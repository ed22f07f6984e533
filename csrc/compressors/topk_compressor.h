// Magnitude Top-K: the k = max(ceil(ratio * numel), min_k) largest-|x| elements as (value,
// index) pairs.
// "topk" selects them by exact radix select; "topk_approx" by a sampled threshold (Deep
// Gradient Compression) that is refined when it misses, which selects the same elements.
#pragma once

#include <atomic>

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class TopKCompressor final : public Compressor {
 public:
  enum class Selection { kExact, kSampledThreshold };

  TopKCompressor(double ratio, Selection selection = Selection::kExact, double sample_ratio = 0.01,
                 int64_t min_k = 0);
  static std::unique_ptr<Compressor> create(const Options& options);
  static std::unique_ptr<Compressor> create_approx(const Options& options);

  // k = max(ceil(ratio * numel), min_k), clamped to [1, numel]. min_k is a per-tensor floor:
  // 1% of a 4,096-element matrix is only 41 values.
  static int64_t k_for(double ratio, int64_t numel, int64_t min_k = 0);
  // The spec suffix ",min_k=N" (empty when min_k is 0, so older specs stay as they were).
  static std::string min_k_spec(int64_t min_k);
  // Reads the min_k option: an integer in [0, 2^31 - 1].
  static int64_t read_min_k(OptionReader& reader);

  std::string name() const override;
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  // k float32 values followed by k int32 indices.
  int64_t payload_numel(int64_t numel) const override { return 8 * k_for(ratio_, numel, min_k_); }
  bool lossless() const override { return ratio_ >= 1.0; }
  // topk_approx selects exactly what topk does, so on CUDA both run the exact select.
  DeviceEncoding device_encoding(int64_t numel) const override {
    return {DeviceEncoding::Kind::kTopK, k_for(ratio_, numel, min_k_)};
  }
  double ratio() const { return ratio_; }
  int64_t min_k() const { return min_k_; }
  // topk_approx: selections whose first sampled threshold missed, since construction.
  int64_t threshold_misses() const { return misses_.load(); }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  void select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
              const CompressContext& ctx) const;

  double ratio_;
  Selection selection_;
  double sample_ratio_;
  int64_t min_k_;
  mutable std::atomic<int64_t> misses_{0};
};

// Decodes k (value, index) pairs into out (out[index] += value), validating every index.
void sparse_payload_accumulate(const char* method, const float* values, const int32_t* indices,
                               int64_t k, const at::Tensor& out);

}  // namespace gradcomp
