#include "compressors/topk_compressor.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>

#include "compressors/aten_task_runner.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/topk.h"

namespace gradcomp {
namespace {

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.is_cpu(), "topk: tensors on ", t.device(),
              " are not supported by this build (CPU only)");
}

float* values_of(const at::Tensor& payload) {
  return reinterpret_cast<float*>(payload.data_ptr<uint8_t>());
}
int32_t* indices_of(const at::Tensor& payload, int64_t k) {
  return reinterpret_cast<int32_t*>(payload.data_ptr<uint8_t>() + 4 * k);
}

}  // namespace

TopKCompressor::TopKCompressor(double ratio) : ratio_(ratio) {
  TORCH_CHECK_VALUE(std::isfinite(ratio) && ratio > 0.0 && ratio <= 1.0, "topk: ratio=", ratio,
                    " is out of range; valid: ratio in (0, 1]");
}

std::unique_ptr<Compressor> TopKCompressor::create(const Options& options) {
  OptionReader reader("topk", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  reader.finish();
  return std::make_unique<TopKCompressor>(ratio);
}

int64_t TopKCompressor::k_for(double ratio, int64_t numel) {
  const auto k = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(numel)));
  return std::min(std::max<int64_t>(k, 1), numel);
}

std::string TopKCompressor::spec() const {
  std::ostringstream out;
  out << "topk:ratio=" << ratio_;
  return out.str();
}

void TopKCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                 const CompressContext& /*ctx*/) const {
  check_cpu(input);
  const int64_t n = input.numel(), k = k_for(ratio_, n);
  kernels::cpu::topk_select(input.data_ptr<float>(), n, k, values_of(payload),
                            indices_of(payload, k), aten_task_runner());
}

void TopKCompressor::do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                               const at::Tensor& payload,
                                               const CompressContext& /*ctx*/) const {
  check_cpu(grad);
  check_cpu(residual);
  const int64_t n = grad.numel(), k = k_for(ratio_, n);
  kernels::cpu::topk_select_compensated(residual.data_ptr<float>(), grad.data_ptr<float>(), n, k,
                                        values_of(payload), indices_of(payload, k),
                                        aten_task_runner());
}

void TopKCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out) const {
  check_cpu(out);
  const int64_t k = k_for(ratio_, out.numel());
  topk_payload_accumulate(values_of(payload), indices_of(payload, k), k, out);
}

void topk_payload_accumulate(const float* values, const int32_t* indices, int64_t k,
                             const at::Tensor& out) {
  const int64_t n = out.numel();
  const int64_t bad = kernels::cpu::sparse_accumulate(values, indices, k, out.data_ptr<float>(), n);
  TORCH_CHECK_INDEX(bad < 0, "topk: corrupt payload: index ", bad < 0 ? 0 : indices[bad],
                    " at position ", bad, " is outside [0, ", n, ")");
}

}  // namespace gradcomp
