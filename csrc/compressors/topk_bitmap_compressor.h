// Top-K with int8 values whose positions travel as a bitmap: the selection and the int8
// quantization of topk_int8 (so the same values reach the optimizer), with the k int32 indices
// replaced by one bit per element. Payload: scale (4 bytes), ceil(numel / 8) bitmap bytes (bit
// i % 8 of byte i / 8 set where element i was sent), k int8 codes in index order. 4 + numel / 8
// + k bytes, against 4 + 5k for topk_int8: smaller once k > numel / 32 (density above about 3%),
// so a tensor can send more of its elements for the same bytes.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"
#include "compressors/topk_int8_compressor.h"

namespace gradcomp {

class TopKBitmapCompressor final : public Compressor {
 public:
  explicit TopKBitmapCompressor(double ratio, int64_t min_k = 0);
  static std::unique_ptr<Compressor> create(const Options& options);

  std::string name() const override { return "topk_bitmap"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  int64_t payload_numel(int64_t numel) const override;

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  int64_t k(int64_t numel) const;
  // topk_int8's payload (scale, k indices, k codes) <-> this one, for a tensor of n elements.
  void pack(const at::Tensor& listed, const at::Tensor& payload, int64_t n) const;
  at::Tensor unpack(const at::Tensor& payload, int64_t n) const;

  double ratio_;
  int64_t min_k_;
  TopKInt8Compressor selection_;
};

}  // namespace gradcomp
