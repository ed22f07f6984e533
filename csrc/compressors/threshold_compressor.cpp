#include "compressors/threshold_compressor.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "compressors/topk_compressor.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/threshold.h"

namespace gradcomp {
namespace {

constexpr int64_t kHeaderBytes = 8;
// Sample size for the density estimate: 1% of the tensor, at least this many, and enough that
// about kSampleHits sampled elements lie above the threshold (relative error ~1/sqrt of it).
constexpr int64_t kMinSamples = 4096;
constexpr double kSampleHits = 400.0;

}  // namespace

ThresholdCompressor::ThresholdCompressor(double tau, double density)
    : tau_(tau), density_(density) {
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau >= 0.0, "threshold: tau=", tau,
                    " is out of range; valid: tau > 0 (fixed), or 0 to adapt to density");
  TORCH_CHECK_VALUE(std::isfinite(density) && density > 0.0 && density <= 1.0,
                    "threshold: density=", density, " is out of range; valid: density in (0, 1]");
}

std::unique_ptr<Compressor> ThresholdCompressor::create(const Options& options) {
  OptionReader reader("threshold", options);
  const double tau = reader.real("tau", 0.0, 0.0, true, HUGE_VAL, false);
  const double density = reader.real("density", 0.01, 0.0, false, 1.0, true);
  reader.finish();
  TORCH_CHECK_VALUE(!(options.count("tau") != 0 && options.count("density") != 0),
                    "threshold: give tau (a fixed threshold) or density (a target fraction), "
                    "not both; got tau=",
                    tau, " and density=", density);
  return std::make_unique<ThresholdCompressor>(tau, density);
}

std::string ThresholdCompressor::spec() const {
  std::ostringstream out;
  out << "threshold:";
  if (tau_ > 0.0) {
    out << "tau=" << tau_;
  } else {
    out << "density=" << density_;
  }
  return out.str();
}

int64_t ThresholdCompressor::target(int64_t n) const { return TopKCompressor::k_for(density_, n); }

int64_t ThresholdCompressor::samples(int64_t n) const {
  return std::max({kMinSamples, static_cast<int64_t>(0.01 * static_cast<double>(n)),
                   static_cast<int64_t>(kSampleHits / density_)});
}

uint32_t ThresholdCompressor::threshold_key(const float* x, int64_t n,
                                            const CompressContext& ctx) const {
  if (tau_ > 0.0) return kernels::cpu::magnitude_key(static_cast<float>(tau_));
  return kernels::cpu::estimate_threshold(x, n, target(n), samples(n),
                                          kernels::philox_key(ctx.seed, ctx.tensor_key),
                                          static_cast<uint64_t>(ctx.step));
}

at::Tensor ThresholdCompressor::encode_cuda(const at::Tensor& x, const at::Tensor& payload,
                                            const CompressContext& ctx) const {
  const int64_t n = x.numel();
  TORCH_CHECK_VALUE(n <= INT32_MAX, "threshold: tensor has ", n,
                    " elements; valid: at most 2^31-1 (indices are int32)");
  const CudaKernels& cuda = cuda_kernels(name());
  // The key stays on the device: an estimate made there costs no wait.
  const at::Tensor key =
      tau_ > 0.0
          ? at::empty({1}, x.options().dtype(at::kInt))
                .fill_(static_cast<int64_t>(kernels::cpu::magnitude_key(static_cast<float>(tau_))))
          : cuda.estimate_threshold(x, target(n), samples(n),
                                    kernels::philox_key(ctx.seed, ctx.tensor_key),
                                    static_cast<uint64_t>(ctx.step));
  const auto indices = cuda.select_at_least(x, key);
  const int64_t count = indices.numel();
  auto header = payload_part(payload, 0, 2, at::kInt);
  header.fill_(0);
  header.narrow(0, 0, 1).fill_(count);
  payload_part(payload, kHeaderBytes, count, at::kFloat).copy_(x.index_select(0, indices));
  payload_part(payload, kHeaderBytes + 4 * count, count, at::kInt).copy_(indices);
  return indices;
}

int64_t ThresholdCompressor::encode(const float* x, int64_t n, const at::Tensor& payload,
                                    const CompressContext& ctx) const {
  TORCH_CHECK_VALUE(n <= INT32_MAX, "threshold: tensor has ", n,
                    " elements; valid: at most 2^31-1 (indices are int32)");
  const uint32_t key = threshold_key(x, n, ctx);
  const int64_t count = kernels::cpu::count_selected(x, n, key, aten_task_runner());
  uint8_t* base = payload.data_ptr<uint8_t>();
  const int32_t header[2] = {static_cast<int32_t>(count), 0};
  std::memcpy(base, header, sizeof(header));
  auto* values = reinterpret_cast<float*>(base + kHeaderBytes);
  auto* indices = reinterpret_cast<int32_t*>(base + kHeaderBytes + 4 * count);
  kernels::cpu::compact_selected(x, n, key, values, indices, count, aten_task_runner());
  return count;
}

int64_t ThresholdCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                         const CompressContext& ctx) const {
  if (input.is_cuda()) return kHeaderBytes + 8 * encode_cuda(input, payload, ctx).numel();
  return kHeaderBytes + 8 * encode(input.data_ptr<float>(), input.numel(), payload, ctx);
}

int64_t ThresholdCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                       const at::Tensor& residual,
                                                       const at::Tensor& payload,
                                                       const CompressContext& ctx) const {
  residual.add_(grad);
  if (grad.is_cuda()) {
    const auto indices = encode_cuda(residual, payload, ctx);
    residual.index_fill_(0, indices.to(at::kLong), 0.0);
    return kHeaderBytes + 8 * indices.numel();
  }
  float* r = residual.data_ptr<float>();
  const int64_t count = encode(r, residual.numel(), payload, ctx);
  const auto* indices =
      reinterpret_cast<const int32_t*>(payload.data_ptr<uint8_t>() + kHeaderBytes + 4 * count);
  for (int64_t i = 0; i < count; ++i) r[indices[i]] = 0.0f;
  return kHeaderBytes + 8 * count;
}

int64_t ThresholdCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                               const CompressContext& ctx) const {
  const int64_t available = payload.numel(), n = out.numel();
  TORCH_CHECK_VALUE(available >= kHeaderBytes, "threshold: corrupt payload: ", available,
                    " bytes, fewer than the ", kHeaderBytes, "-byte header");
  int32_t header[2];
  if (out.is_cuda()) {
    // The count decides where the next payload starts, so the host needs it: one wait.
    header[0] = payload_part(payload, 0, 1, at::kInt).item<int32_t>();
  } else {
    std::memcpy(header, payload.data_ptr<uint8_t>(), sizeof(header));
  }
  const int64_t count = header[0];
  TORCH_CHECK_VALUE(count >= 0 && count <= n && kHeaderBytes + 8 * count <= available,
                    "threshold: corrupt payload: count ", count, " is outside [0, ",
                    std::min(n, (available - kHeaderBytes) / 8), "] for a tensor of ", n,
                    " elements and ", available, " payload bytes");
  if (out.is_cuda()) {
    cuda_kernels(name()).sparse_accumulate(
        payload_part(payload, kHeaderBytes, count, at::kFloat),
        payload_part(payload, kHeaderBytes + 4 * count, count, at::kInt), out, 1.0f,
        !ctx.defer_checks, "threshold");
    return kHeaderBytes + 8 * count;
  }
  const uint8_t* base = payload.data_ptr<uint8_t>();
  const auto* values = reinterpret_cast<const float*>(base + kHeaderBytes);
  const auto* indices = reinterpret_cast<const int32_t*>(base + kHeaderBytes + 4 * count);
  sparse_payload_accumulate("threshold", values, indices, count, out);
  return kHeaderBytes + 8 * count;
}

}  // namespace gradcomp
