// "none": the uncompressed control. The payload is the fp32 gradient itself, allreduced, so a
// run with it measures gradcomp's own machinery against plain DDP.
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class DenseCompressor final : public Compressor {
 public:
  static std::unique_ptr<Compressor> create(const Options& options);

  std::string name() const override { return "none"; }
  std::string spec() const override { return "none"; }
  Collective collective() const override { return Collective::kAllReduce; }
  at::ScalarType payload_dtype() const override { return at::kFloat; }
  int64_t payload_numel(int64_t numel) const override { return numel; }
  bool lossless() const override { return true; }
  DeviceEncoding device_encoding(int64_t /*numel*/) const override {
    return {DeviceEncoding::Kind::kDense};
  }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
};

}  // namespace gradcomp
