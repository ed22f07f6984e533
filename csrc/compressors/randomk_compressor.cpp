#include "compressors/randomk_compressor.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "compressors/topk_compressor.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/randomk.h"

namespace gradcomp {
namespace {

// The draw of RandomKCompressor::draw, made on the device into an int32 tensor.
at::Tensor draw_cuda(int64_t numel, int64_t k, const CompressContext& ctx,
                     const at::Device& device) {
  TORCH_CHECK_VALUE(numel <= INT32_MAX, "randomk: tensor has ", numel,
                    " elements; valid: at most 2^31-1 (indices are int32)");
  auto indices = at::empty({k}, at::TensorOptions().dtype(at::kInt).device(device));
  cuda_kernels("randomk").randomk_indices(numel, kernels::philox_key(ctx.seed, ctx.tensor_key),
                                          static_cast<uint64_t>(ctx.step), indices);
  return indices;
}

}  // namespace

RandomKCompressor::RandomKCompressor(double ratio, bool unbiased, int64_t min_k)
    : ratio_(ratio), unbiased_(unbiased), min_k_(min_k) {
  check_fraction("randomk", "ratio", ratio);
  TORCH_CHECK_VALUE(min_k >= 0 && min_k <= INT32_MAX, "randomk: min_k=", min_k,
                    " is out of range; valid: 0 to ", INT32_MAX);
}

std::unique_ptr<Compressor> RandomKCompressor::create(const Options& options) {
  OptionReader reader("randomk", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  const bool unbiased = reader.flag("unbiased", false);
  const int64_t min_k = TopKCompressor::read_min_k(reader);
  reader.finish();
  return std::make_unique<RandomKCompressor>(ratio, unbiased, min_k);
}

std::string RandomKCompressor::spec() const {
  std::ostringstream out;
  out << "randomk:ratio=" << ratio_ << ",unbiased=" << (unbiased_ ? 1 : 0)
      << TopKCompressor::min_k_spec(min_k_);
  return out.str();
}

DeviceEncoding RandomKCompressor::device_encoding(int64_t numel) const {
  DeviceEncoding encoding{DeviceEncoding::Kind::kRandomK, payload_numel(numel)};
  encoding.unbiased = unbiased_;
  return encoding;
}

int64_t RandomKCompressor::payload_numel(int64_t numel) const {
  return TopKCompressor::k_for(ratio_, numel, min_k_);
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
  const int64_t n = input.numel();
  if (input.is_cuda()) {
    const auto indices = draw_cuda(n, payload.numel(), ctx, input.device());
    cuda_kernels(name()).randomk_gather(input, indices, unbiased_, payload);
    return payload.numel();
  }
  const auto indices = draw(n, ctx);
  kernels::cpu::randomk_gather(input.data_ptr<float>(), n, payload.numel(), indices.data(),
                               unbiased_, payload.data_ptr<float>(), aten_task_runner());
  return payload.numel();
}

int64_t RandomKCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                     const at::Tensor& residual,
                                                     const at::Tensor& payload,
                                                     const CompressContext& ctx) const {
  residual.add_(grad);
  const int64_t n = residual.numel(), k = payload.numel();
  if (grad.is_cuda()) {
    const auto indices = draw_cuda(n, k, ctx, grad.device());
    cuda_kernels(name()).randomk_gather(residual, indices, unbiased_, payload);
    // The draw has no repeated index, so this subtraction is exact and deterministic.
    residual.index_add_(0, indices.to(at::kLong), payload, -1);
    return k;
  }
  const auto indices = draw(n, ctx);
  float* r = residual.data_ptr<float>();
  float* values = payload.data_ptr<float>();
  kernels::cpu::randomk_gather(r, n, k, indices.data(), unbiased_, values, aten_task_runner());
  for (int64_t i = 0; i < k; ++i) r[indices[i]] -= values[i];
  return k;
}

int64_t RandomKCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                             const CompressContext& ctx) const {
  if (out.is_cuda()) {
    const auto indices = draw_cuda(out.numel(), payload.numel(), ctx, out.device());
    cuda_kernels(name()).sparse_accumulate(payload, indices, out, 1.0f, !ctx.defer_checks,
                                           "randomk");
    return payload.numel();
  }
  const auto indices = draw(out.numel(), ctx);
  sparse_payload_accumulate("randomk", payload.data_ptr<float>(), indices.data(), payload.numel(),
                            out);
  return payload.numel();
}

}  // namespace gradcomp
