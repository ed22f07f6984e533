// CPU kernels of the generic ops: any per-tensor method by spec, and PowerSGD's batched
// orthonormalization.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "compressors/aten_task_runner.h"
#include "compressors/registry.h"
#include "kernels/cpu/orthonormalize.h"

namespace gradcomp::ops {
namespace {

std::shared_ptr<const Compressor> compressor_for(const std::string& spec) {
  auto method = make_method_from_spec(spec);
  auto compressor = std::dynamic_pointer_cast<const Compressor>(method);
  TORCH_CHECK_VALUE(compressor != nullptr, "'", spec,
                    "' is a bucket-level method (two allreduce rounds); compress/decompress "
                    "take per-tensor methods: ",
                    "topk, topk_approx, topk_int8, randomk, threshold, qsgd, sign, int8, fp16, "
                    "bf16, none");
  return compressor;
}

CompressContext context(int64_t step, int64_t seed, int64_t tensor_key, int64_t rank) {
  return {static_cast<uint64_t>(seed), step, static_cast<uint64_t>(tensor_key), rank, 1.0};
}

at::Tensor compress_cpu(const at::Tensor& input, const std::string& spec, int64_t step,
                        int64_t seed, int64_t tensor_key, int64_t rank) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, "compress: input must be float32, got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(input.numel() >= 1, "compress: input is empty; valid: at least 1 element");
  const auto compressor = compressor_for(spec);
  const auto flat = input.contiguous().view({-1});
  auto payload = at::empty({compressor->payload_numel(flat.numel())},
                           input.options().dtype(compressor->payload_dtype()));
  const int64_t used = compressor->compress(flat, payload, context(step, seed, tensor_key, rank));
  return used == payload.numel() ? payload : payload.narrow(0, 0, used).clone();
}

at::Tensor decompress_cpu(const at::Tensor& payload, const std::string& spec, int64_t numel,
                          int64_t step, int64_t seed, int64_t tensor_key) {
  TORCH_CHECK_VALUE(numel >= 1, "decompress: numel=", numel, " is out of range; valid: >= 1");
  const auto compressor = compressor_for(spec);
  auto out = at::zeros({numel}, payload.options().dtype(at::kFloat));
  compressor->decompress_add(payload.contiguous(), out, context(step, seed, tensor_key, 0));
  return out;
}

at::Tensor orthonormalize_cpu(const at::Tensor& matrices) {
  TORCH_CHECK_TYPE(matrices.scalar_type() == at::kFloat,
                   "orthonormalize: matrices must be float32, got ", matrices.scalar_type());
  TORCH_CHECK_VALUE(matrices.dim() >= 2 && matrices.numel() >= 1,
                    "orthonormalize: expected a non-empty [..., n, r] tensor, got shape ",
                    matrices.sizes());
  auto out = matrices.contiguous().clone();
  const int64_t rows = out.size(-2), cols = out.size(-1);
  const int64_t count = out.numel() / (rows * cols);
  std::vector<float*> pointers(count);
  std::vector<int64_t> row_counts(count, rows);
  for (int64_t b = 0; b < count; ++b) pointers[b] = out.data_ptr<float>() + b * rows * cols;
  kernels::cpu::orthonormalize_columns(pointers.data(), row_counts.data(), count, cols,
                                       aten_task_runner());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradcomp, CPU, m) {
  m.impl("compress", &compress_cpu);
  m.impl("decompress", &decompress_cpu);
  m.impl("orthonormalize", &orthonormalize_cpu);
}

}  // namespace gradcomp::ops
