#include "compressors/randomk_compressor.h"

#include <c10/util/Exception.h>

#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/topk_compressor.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/randomk.h"

namespace gradcomp {

RandomKCompressor::RandomKCompressor(double ratio, bool unbiased)
    : ratio_(ratio), unbiased_(unbiased) {
  check_fraction("randomk", "ratio", ratio);
}

std::unique_ptr<Compressor> RandomKCompressor::create(const Options& options) {
  OptionReader reader("randomk", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  const bool unbiased = reader.flag("unbiased", false);
  reader.finish();
  return std::make_unique<RandomKCompressor>(ratio, unbiased);
}

std::string RandomKCompressor::spec() const {
  std::ostringstream out;
  out << "randomk:ratio=" << ratio_ << ",unbiased=" << (unbiased_ ? 1 : 0);
  return out.str();
}

int64_t RandomKCompressor::payload_numel(int64_t numel) const {
  return TopKCompressor::k_for(ratio_, numel);
}

std::vector<int32_t> RandomKCompressor::draw(int64_t numel, const CompressContext& ctx) const {
  TORCH_CHECK_VALUE(numel <= INT32_MAX, "randomk: tensor has ", numel,
                    " elements; valid: at most 2^31-1 (indices are int32)");
  const int64_t k = payload_numel(numel);
  std::vector<int32_t> indices(k);
  // Keyed by parameter and seed, countered by step: the same draw on every rank, never rank.
  kernels::cpu::randomk_indices(numel, k, kernels::philox_key(ctx.seed, ctx.tensor_key),
                                static_cast<uint64_t>(ctx.step), indices.data(),
                                aten_task_runner());
  return indices;
}

int64_t RandomKCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                       const CompressContext& ctx) const {
  check_cpu_tensor(input, name());
  const int64_t n = input.numel();
  const auto indices = draw(n, ctx);
  kernels::cpu::randomk_gather(input.data_ptr<float>(), n, payload.numel(), indices.data(),
                               unbiased_, payload.data_ptr<float>(), aten_task_runner());
  return payload.numel();
}

int64_t RandomKCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                     const at::Tensor& residual,
                                                     const at::Tensor& payload,
                                                     const CompressContext& ctx) const {
  check_cpu_tensor(grad, name());
  check_cpu_tensor(residual, name());
  residual.add_(grad);
  const int64_t n = residual.numel(), k = payload.numel();
  const auto indices = draw(n, ctx);
  float* r = residual.data_ptr<float>();
  float* values = payload.data_ptr<float>();
  kernels::cpu::randomk_gather(r, n, k, indices.data(), unbiased_, values, aten_task_runner());
  for (int64_t i = 0; i < k; ++i) r[indices[i]] -= values[i];
  return k;
}

int64_t RandomKCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                             const CompressContext& ctx) const {
  check_cpu_tensor(out, name());
  const auto indices = draw(out.numel(), ctx);
  sparse_payload_accumulate("randomk", payload.data_ptr<float>(), indices.data(), payload.numel(),
                            out);
  return payload.numel();
}

}  // namespace gradcomp
