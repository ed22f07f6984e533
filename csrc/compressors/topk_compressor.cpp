#include "compressors/topk_compressor.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/threshold.h"
#include "kernels/cpu/topk.h"

namespace gradcomp {
namespace {

// Fewer samples than this make the threshold estimate too coarse to be worth a pass.
constexpr int64_t kMinSamples = 4096;

float* values_of(const at::Tensor& payload) {
  return reinterpret_cast<float*>(payload.data_ptr<uint8_t>());
}
int32_t* indices_of(const at::Tensor& payload, int64_t k) {
  return reinterpret_cast<int32_t*>(payload.data_ptr<uint8_t>() + 4 * k);
}

// CUDA: the sampled-threshold variant selects exactly what the exact select does (see
// kernels/cpu/threshold.h), so both run the exact radix select there.
void select_cuda(const std::string& method, const at::Tensor& x, const at::Tensor& payload,
                 int64_t k) {
  cuda_kernels(method).topk_select(x, payload_part(payload, 0, k, at::kFloat),
                                   payload_part(payload, 4 * k, k, at::kInt));
}

}  // namespace

TopKCompressor::TopKCompressor(double ratio, Selection selection, double sample_ratio,
                               int64_t min_k)
    : ratio_(ratio), selection_(selection), sample_ratio_(sample_ratio), min_k_(min_k) {
  TORCH_CHECK_VALUE(min_k >= 0 && min_k <= INT32_MAX, name(), ": min_k=", min_k,
                    " is out of range; valid: 0 to ", INT32_MAX);
  check_fraction(name(), "ratio", ratio);
  check_fraction(name(), "sample_ratio", sample_ratio);
}

std::unique_ptr<Compressor> TopKCompressor::create(const Options& options) {
  OptionReader reader("topk", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  const int64_t min_k = read_min_k(reader);
  reader.finish();
  return std::make_unique<TopKCompressor>(ratio, Selection::kExact, 0.01, min_k);
}

std::unique_ptr<Compressor> TopKCompressor::create_approx(const Options& options) {
  OptionReader reader("topk_approx", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  const double sample_ratio = reader.real("sample_ratio", 0.01, 0.0, false, 1.0, true);
  const int64_t min_k = read_min_k(reader);
  reader.finish();
  return std::make_unique<TopKCompressor>(ratio, Selection::kSampledThreshold, sample_ratio, min_k);
}

int64_t TopKCompressor::k_for(double ratio, int64_t numel, int64_t min_k) {
  const auto k = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(numel)));
  return std::min(std::max<int64_t>({k, min_k, 1}), numel);
}

std::string TopKCompressor::min_k_spec(int64_t min_k) {
  return min_k == 0 ? std::string() : ",min_k=" + std::to_string(min_k);
}

int64_t TopKCompressor::read_min_k(OptionReader& reader) {
  return reader.integer("min_k", 0, 0, INT32_MAX);
}

std::string TopKCompressor::name() const {
  return selection_ == Selection::kExact ? "topk" : "topk_approx";
}

std::string TopKCompressor::spec() const {
  std::ostringstream out;
  out << name() << ":ratio=" << ratio_;
  if (selection_ == Selection::kSampledThreshold) out << ",sample_ratio=" << sample_ratio_;
  out << min_k_spec(min_k_);
  return out.str();
}

void TopKCompressor::select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                            const CompressContext& ctx) const {
  if (selection_ == Selection::kExact) {
    kernels::cpu::topk_select(x, n, k, values, indices, aten_task_runner());
    return;
  }
  const auto samples = std::max<int64_t>(
      kMinSamples, static_cast<int64_t>(std::ceil(sample_ratio_ * static_cast<double>(n))));
  const int64_t extra = kernels::cpu::topk_approx_select(
      x, n, k, samples, kernels::philox_key(ctx.seed, ctx.tensor_key),
      static_cast<uint64_t>(ctx.step), values, indices, aten_task_runner());
  if (extra > 0) misses_.fetch_add(1, std::memory_order_relaxed);
}

int64_t TopKCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                    const CompressContext& ctx) const {
  const int64_t n = input.numel(), k = k_for(ratio_, n, min_k_);
  if (input.is_cuda()) {
    select_cuda(name(), input, payload, k);
    return payload.numel();
  }
  select(input.data_ptr<float>(), n, k, values_of(payload), indices_of(payload, k), ctx);
  return payload.numel();
}

int64_t TopKCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                  const at::Tensor& residual,
                                                  const at::Tensor& payload,
                                                  const CompressContext& ctx) const {
  const int64_t n = grad.numel(), k = k_for(ratio_, n, min_k_);
  if (grad.is_cuda()) {
    residual.add_(grad);
    select_cuda(name(), residual, payload, k);
    residual.index_fill_(0, payload_part(payload, 4 * k, k, at::kInt).to(at::kLong), 0.0);
    return payload.numel();
  }
  float* values = values_of(payload);
  int32_t* indices = indices_of(payload, k);
  if (selection_ == Selection::kExact) {
    kernels::cpu::topk_select_compensated(residual.data_ptr<float>(), grad.data_ptr<float>(), n, k,
                                          values, indices, aten_task_runner());
    return payload.numel();
  }
  residual.add_(grad);
  float* r = residual.data_ptr<float>();
  select(r, n, k, values, indices, ctx);
  // What was sent leaves the residual exactly (values are copies, not approximations).
  for (int64_t i = 0; i < k; ++i) r[indices[i]] = 0.0f;
  return payload.numel();
}

int64_t TopKCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                          const CompressContext& ctx) const {
  const int64_t k = k_for(ratio_, out.numel(), min_k_);
  if (out.is_cuda()) {
    cuda_kernels(name()).sparse_accumulate(payload_part(payload, 0, k, at::kFloat),
                                           payload_part(payload, 4 * k, k, at::kInt), out, 1.0f,
                                           !ctx.defer_checks, name().c_str());
    return payload.numel();
  }
  sparse_payload_accumulate(name().c_str(), values_of(payload), indices_of(payload, k), k, out);
  return payload.numel();
}

void sparse_payload_accumulate(const char* method, const float* values, const int32_t* indices,
                               int64_t k, const at::Tensor& out) {
  const int64_t n = out.numel();
  const int64_t bad = kernels::cpu::sparse_accumulate(values, indices, k, out.data_ptr<float>(), n);
  TORCH_CHECK_INDEX(bad < 0, method, ": corrupt payload: index ", bad < 0 ? 0 : indices[bad],
                    " at position ", bad, " is outside [0, ", n, ")");
}

}  // namespace gradcomp
