#include "compressors/dense_compressor.h"

namespace gradcomp {

std::unique_ptr<Compressor> DenseCompressor::create(const Options& options) {
  OptionReader("none", options).finish();
  return std::make_unique<DenseCompressor>();
}

int64_t DenseCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                     const CompressContext& /*ctx*/) const {
  payload.copy_(input);
  return payload.numel();
}

int64_t DenseCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                           const CompressContext& /*ctx*/) const {
  out.add_(payload);
  return payload.numel();
}

}  // namespace gradcomp
