// Top-K whose values travel as int8: exact Top-K selection, then the k values quantized
// symmetrically with one float32 scale. Payload: scale (4 bytes), k int32 indices, k int8 codes
// (4 + 5k bytes, vs 8k for "topk"). With error feedback the quantization error of the sent
// values stays in the residual.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class TopKInt8Compressor final : public Compressor {
 public:
  explicit TopKInt8Compressor(double ratio, int64_t min_k = 0);
  static std::unique_ptr<Compressor> create(const Options& options);

  std::string name() const override { return "topk_int8"; }
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  int64_t payload_numel(int64_t numel) const override;
  DeviceEncoding device_encoding(int64_t numel) const override;

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  // Selects into payload from x (residual += grad first when grad is given and zeroing what was
  // selected, as topk_select_compensated does); returns nothing, layout as documented above.
  void encode(float* x, const float* grad, bool compensated, int64_t n,
              const at::Tensor& payload) const;

  int64_t k(int64_t numel) const;

  double ratio_;
  int64_t min_k_;
};

}  // namespace gradcomp
