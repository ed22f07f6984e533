// Chunked quantizers (kernels/cpu/quantize.h): QSGD, scaled 1-bit sign and int8. Each payload is
// per-chunk float32 statistics followed by densely packed codes; payloads are gathered and
// every rank's is decoded and summed (codes of different ranks use different scales).
#pragma once

#include "compressors/compressor.h"
#include "compressors/options.h"

namespace gradcomp {

class QuantizeCompressor final : public Compressor {
 public:
  enum class Kind { kQsgd, kSign, kInt8 };

  // bits: 2, 4 or 8 for QSGD (ignored otherwise); chunk: a multiple of 8.
  QuantizeCompressor(Kind kind, int64_t bits, int64_t chunk);
  static std::unique_ptr<Compressor> create_qsgd(const Options& options);
  static std::unique_ptr<Compressor> create_sign(const Options& options);
  static std::unique_ptr<Compressor> create_int8(const Options& options);

  std::string name() const override;
  std::string spec() const override;
  Collective collective() const override { return Collective::kAllGather; }
  at::ScalarType payload_dtype() const override { return at::kByte; }
  int64_t payload_numel(int64_t numel) const override;
  DeviceEncoding device_encoding(int64_t numel) const override;
  int64_t bits() const { return bits_; }
  int64_t chunk() const { return chunk_; }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  // residual += grad; encode; residual -= decoded, in the decoder's pass (no temporary).
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  void decode(const at::Tensor& payload, const at::Tensor& out, float alpha) const;

  Kind kind_;
  int64_t bits_;
  int64_t chunk_;
};

// fp16 / bf16: a cast of prescale * x, allreduced in that dtype (prescale = 1 / world size, as
// PyTorch's fp16_compress_hook divides before the allreduce, so the sum cannot overflow).
class CastCompressor final : public Compressor {
 public:
  explicit CastCompressor(at::ScalarType dtype);
  static std::unique_ptr<Compressor> create_fp16(const Options& options);
  static std::unique_ptr<Compressor> create_bf16(const Options& options);

  std::string name() const override { return dtype_ == at::kHalf ? "fp16" : "bf16"; }
  std::string spec() const override { return name(); }
  Collective collective() const override { return Collective::kAllReduce; }
  at::ScalarType payload_dtype() const override { return dtype_; }
  int64_t payload_numel(int64_t numel) const override { return numel; }
  DeviceEncoding device_encoding(int64_t /*numel*/) const override {
    DeviceEncoding encoding{DeviceEncoding::Kind::kCast};
    encoding.half = dtype_ == at::kHalf;
    return encoding;
  }

 protected:
  int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                      const CompressContext& ctx) const override;
  int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                            const CompressContext& ctx) const override;
  int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                    const at::Tensor& payload,
                                    const CompressContext& ctx) const override;

 private:
  void decode(const at::Tensor& payload, const at::Tensor& out, float alpha) const;

  at::ScalarType dtype_;
};

}  // namespace gradcomp
