// CUDA kernels of the ops: the same argument checks as the CPU ones (ops/common.h), then the
// compressor layer's CUDA backend on the inputs' device and current stream. Built only with
// the CUDA kernels, and compile-checked by CI without a CUDA torch (generic c10 APIs only).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "compressors/cuda_kernels.h"
#include "ops/common.h"

namespace gradcomp::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_compress_cuda(const at::Tensor& input, int64_t k) {
  check_topk_compress(input, k);
  const c10::DeviceGuard guard(input.device());
  const auto flat = input.contiguous().view({-1});
  auto values = at::empty({k}, input.options());
  auto indices = at::empty({k}, input.options().dtype(at::kInt));
  cuda_kernels("topk_compress").topk_select(flat, values, indices);
  return {values, indices};
}

at::Tensor topk_decompress_cuda(const at::Tensor& values, const at::Tensor& indices,
                                int64_t numel) {
  check_topk_decompress(values, indices, numel);
  const c10::DeviceGuard guard(values.device());
  auto out = at::zeros({numel}, values.options());
  // check == true: a standalone op reports a bad index at the call (it waits for the device).
  cuda_kernels("topk_decompress")
      .sparse_accumulate(values.contiguous(), indices.contiguous(), out, 1.0f, true,
                         "topk_decompress");
  return out;
}

at::Tensor compress_cuda(const at::Tensor& input, const std::string& spec, int64_t step,
                         int64_t seed, int64_t tensor_key, int64_t rank) {
  const c10::DeviceGuard guard(input.device());
  return compress_by_spec(input, spec, step, seed, tensor_key, rank);
}

at::Tensor decompress_cuda(const at::Tensor& payload, const std::string& spec, int64_t numel,
                           int64_t step, int64_t seed, int64_t tensor_key) {
  const c10::DeviceGuard guard(payload.device());
  return decompress_by_spec(payload, spec, numel, step, seed, tensor_key);
}

at::Tensor orthonormalize_cuda(const at::Tensor& matrices) {
  check_orthonormalize(matrices);
  const c10::DeviceGuard guard(matrices.device());
  auto out = matrices.contiguous().clone();
  const int64_t rows = out.size(-2), cols = out.size(-1);
  const auto flat = out.view({-1});
  std::vector<at::Tensor> views;
  for (int64_t b = 0; b < out.numel() / (rows * cols); ++b) {
    views.push_back(flat.narrow(0, b * rows * cols, rows * cols));
  }
  cuda_kernels("orthonormalize").orthonormalize(views, cols);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradcomp, CUDA, m) {
  m.impl("topk_compress", &topk_compress_cuda);
  m.impl("topk_decompress", &topk_decompress_cuda);
  m.impl("compress", &compress_cuda);
  m.impl("decompress", &decompress_cuda);
  m.impl("orthonormalize", &orthonormalize_cuda);
}

}  // namespace gradcomp::ops
