// CPU kernels of the Top-K ops: argument checks, then the torch-free kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "compressors/aten_task_runner.h"
#include "compressors/topk_compressor.h"
#include "kernels/cpu/topk.h"

namespace gradcomp::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_compress_cpu(const at::Tensor& input, int64_t k) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, "topk_compress: input must be float32, got ",
                   input.scalar_type());
  const int64_t n = input.numel();
  TORCH_CHECK_VALUE(n >= 1 && n <= INT32_MAX, "topk_compress: input has ", n,
                    " elements; valid: 1 to 2^31-1 (indices are int32)");
  TORCH_CHECK_VALUE(k >= 1 && k <= n, "topk_compress: k=", k,
                    " is out of range; valid: 1 <= k <= ", n, " (input.numel())");
  const auto flat = input.contiguous();
  auto values = at::empty({k}, input.options());
  auto indices = at::empty({k}, input.options().dtype(at::kInt));
  kernels::cpu::topk_select(flat.data_ptr<float>(), n, k, values.data_ptr<float>(),
                            indices.data_ptr<int32_t>(), aten_task_runner());
  return {values, indices};
}

at::Tensor topk_decompress_cpu(const at::Tensor& values, const at::Tensor& indices, int64_t numel) {
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat,
                   "topk_decompress: values must be float32, got ", values.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt,
                   "topk_decompress: indices must be int32, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1 && indices.dim() == 1 && values.numel() == indices.numel(),
                    "topk_decompress: values and indices must be 1-D of equal length, got shapes ",
                    values.sizes(), " and ", indices.sizes());
  TORCH_CHECK_VALUE(numel >= 1 && numel <= INT32_MAX, "topk_decompress: numel=", numel,
                    " is out of range; valid: 1 to 2^31-1");
  auto out = at::zeros({numel}, values.options());
  const auto v = values.contiguous();
  const auto i = indices.contiguous();
  sparse_payload_accumulate("topk_decompress", v.data_ptr<float>(), i.data_ptr<int32_t>(),
                            v.numel(), out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradcomp, CPU, m) {
  m.impl("topk_compress", &topk_compress_cpu);
  m.impl("topk_decompress", &topk_decompress_cpu);
}

}  // namespace gradcomp::ops
