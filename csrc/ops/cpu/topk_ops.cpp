// CPU kernels of the Top-K ops: argument checks, then the torch-free kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "compressors/aten_task_runner.h"
#include "compressors/topk_compressor.h"
#include "kernels/cpu/topk.h"
#include "ops/common.h"

namespace gradcomp::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_compress_cpu(const at::Tensor& input, int64_t k) {
  check_topk_compress(input, k);
  const auto flat = input.contiguous();
  auto values = at::empty({k}, input.options());
  auto indices = at::empty({k}, input.options().dtype(at::kInt));
  kernels::cpu::topk_select(flat.data_ptr<float>(), flat.numel(), k, values.data_ptr<float>(),
                            indices.data_ptr<int32_t>(), aten_task_runner());
  return {values, indices};
}

at::Tensor topk_decompress_cpu(const at::Tensor& values, const at::Tensor& indices, int64_t numel) {
  check_topk_decompress(values, indices, numel);
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
