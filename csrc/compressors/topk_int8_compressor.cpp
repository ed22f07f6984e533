#include "compressors/topk_int8_compressor.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "compressors/topk_compressor.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/topk.h"

namespace gradcomp {
namespace {

struct View {
  float* scale;
  int32_t* indices;
  int8_t* codes;
};

View view_of(const at::Tensor& payload, int64_t k) {
  uint8_t* base = payload.data_ptr<uint8_t>();
  return {reinterpret_cast<float*>(base), reinterpret_cast<int32_t*>(base + 4),
          reinterpret_cast<int8_t*>(base + 4 + 4 * k)};
}

// CUDA: Top-K of x (after x += grad when grad is given), then kernels/cpu/sparse.cpp's
// int8_symmetric_encode written as tensor ops with the same float arithmetic (round() is
// half-to-even like nearbyint), all on the device. With grad, x keeps what int8 could not carry.
void encode_cuda(const at::Tensor& x, const at::Tensor* grad, const at::Tensor& payload,
                 int64_t k) {
  if (grad != nullptr) x.add_(*grad);
  auto values = at::empty({k}, x.options());
  const auto indices = payload_part(payload, 4, k, at::kInt);
  cuda_kernels("topk_int8").topk_select(x, values, indices);
  const auto finite = values.isfinite().all();
  // Divide by a device tensor: ATen turns division by a host scalar into a multiplication by
  // its reciprocal, which can differ from the CPU's division in the last bit.
  const auto scale = values.abs().max().div(at::scalar_tensor(127.0, values.options()));
  const auto inverse = at::where(scale.gt(0), scale.reciprocal(), 0.0);
  // nan_to_num: a scale so small that 1 / scale overflows makes a zero value 0 * inf = NaN.
  const auto codes =
      at::where(finite, values.mul(inverse).round().nan_to_num(0.0).clamp(-127, 127), 0.0);
  payload_part(payload, 0, 1, at::kFloat)
      .copy_(at::where(finite, scale, std::nan("")).reshape({1}));
  payload_part(payload, 4 + 4 * k, k, at::kChar).copy_(codes);
  if (grad != nullptr) {
    const auto kept = at::where(finite, values.sub(codes.mul(scale)), 0.0);
    x.index_copy_(0, indices.to(at::kLong), kept);
  }
}

}  // namespace

TopKInt8Compressor::TopKInt8Compressor(double ratio, int64_t min_k) : ratio_(ratio), min_k_(min_k) {
  check_fraction("topk_int8", "ratio", ratio);
  TORCH_CHECK_VALUE(min_k >= 0 && min_k <= INT32_MAX, "topk_int8: min_k=", min_k,
                    " is out of range; valid: 0 to ", INT32_MAX);
}

std::unique_ptr<Compressor> TopKInt8Compressor::create(const Options& options) {
  OptionReader reader("topk_int8", options);
  const double ratio = reader.real("ratio", 0.01, 0.0, false, 1.0, true);
  const int64_t min_k = TopKCompressor::read_min_k(reader);
  reader.finish();
  return std::make_unique<TopKInt8Compressor>(ratio, min_k);
}

std::string TopKInt8Compressor::spec() const {
  std::ostringstream out;
  out << "topk_int8:ratio=" << ratio_ << TopKCompressor::min_k_spec(min_k_);
  return out.str();
}

int64_t TopKInt8Compressor::k(int64_t numel) const {
  return TopKCompressor::k_for(ratio_, numel, min_k_);
}

DeviceEncoding TopKInt8Compressor::device_encoding(int64_t numel) const {
  return {DeviceEncoding::Kind::kTopKInt8, k(numel)};
}

int64_t TopKInt8Compressor::payload_numel(int64_t numel) const { return 4 + 5 * k(numel); }

void TopKInt8Compressor::encode(float* x, const float* grad, bool compensated, int64_t n,
                                const at::Tensor& payload) const {
  const int64_t k = this->k(n);
  const View v = view_of(payload, k);
  std::vector<float> values(k);
  std::vector<int32_t> indices(k);  // aligned scratch: the payload's int32s need not be
  if (compensated) {
    kernels::cpu::topk_select_compensated(x, grad, n, k, values.data(), indices.data(),
                                          aten_task_runner());
  } else {
    kernels::cpu::topk_select(x, n, k, values.data(), indices.data(), aten_task_runner());
  }
  const float scale = kernels::cpu::int8_symmetric_encode(values.data(), k, v.codes);
  std::memcpy(v.scale, &scale, sizeof(scale));
  std::memcpy(v.indices, indices.data(), 4 * k);
  if (compensated && std::isfinite(scale)) {
    // topk_select_compensated zeroed the sent entries; put back what int8 could not carry.
    for (int64_t i = 0; i < k; ++i) {
      x[indices[i]] = values[i] - kernels::cpu::int8_symmetric_decode(v.codes[i], scale);
    }
  }
}

int64_t TopKInt8Compressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                        const CompressContext& /*ctx*/) const {
  if (input.is_cuda()) {
    encode_cuda(input, nullptr, payload, k(input.numel()));
    return payload.numel();
  }
  encode(const_cast<float*>(input.data_ptr<float>()), nullptr, false, input.numel(), payload);
  return payload.numel();
}

int64_t TopKInt8Compressor::do_compress_with_feedback(const at::Tensor& grad,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& payload,
                                                      const CompressContext& /*ctx*/) const {
  if (grad.is_cuda()) {
    encode_cuda(residual, &grad, payload, k(grad.numel()));
    return payload.numel();
  }
  encode(residual.data_ptr<float>(), grad.data_ptr<float>(), true, grad.numel(), payload);
  return payload.numel();
}

int64_t TopKInt8Compressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                              const CompressContext& ctx) const {
  const int64_t n = out.numel(), k = this->k(n);
  if (out.is_cuda()) {
    const auto scale = payload_part(payload, 0, 1, at::kFloat);
    const auto decoded = payload_part(payload, 4 + 4 * k, k, at::kChar).to(at::kFloat).mul(scale);
    cuda_kernels(name()).sparse_accumulate(decoded, payload_part(payload, 4, k, at::kInt), out,
                                           1.0f, !ctx.defer_checks, "topk_int8");
    return payload.numel();
  }
  const View v = view_of(payload, k);
  float scale;
  std::memcpy(&scale, v.scale, sizeof(scale));
  std::vector<int32_t> indices(k);
  std::memcpy(indices.data(), v.indices, 4 * k);
  const int64_t bad = kernels::cpu::sparse_accumulate_int8(scale, v.codes, indices.data(), k,
                                                           out.data_ptr<float>(), n);
  TORCH_CHECK_INDEX(bad < 0, "topk_int8: corrupt payload: index ", bad < 0 ? 0 : indices[bad],
                    " at position ", bad, " is outside [0, ", n, ")");
  return payload.numel();
}

}  // namespace gradcomp
