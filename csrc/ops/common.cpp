#include "ops/common.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <memory>

#include "compressors/registry.h"

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

}  // namespace

void check_topk_compress(const at::Tensor& input, int64_t k) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat, "topk_compress: input must be float32, got ",
                   input.scalar_type());
  const int64_t n = input.numel();
  TORCH_CHECK_VALUE(n >= 1 && n <= INT32_MAX, "topk_compress: input has ", n,
                    " elements; valid: 1 to 2^31-1 (indices are int32)");
  TORCH_CHECK_VALUE(k >= 1 && k <= n, "topk_compress: k=", k,
                    " is out of range; valid: 1 <= k <= ", n, " (input.numel())");
}

void check_topk_decompress(const at::Tensor& values, const at::Tensor& indices, int64_t numel) {
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat,
                   "topk_decompress: values must be float32, got ", values.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt,
                   "topk_decompress: indices must be int32, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1 && indices.dim() == 1 && values.numel() == indices.numel(),
                    "topk_decompress: values and indices must be 1-D of equal length, got shapes ",
                    values.sizes(), " and ", indices.sizes());
  TORCH_CHECK_VALUE(values.device() == indices.device(), "topk_decompress: values are on ",
                    values.device(), " but indices are on ", indices.device());
  TORCH_CHECK_VALUE(numel >= 1 && numel <= INT32_MAX, "topk_decompress: numel=", numel,
                    " is out of range; valid: 1 to 2^31-1");
}

void check_orthonormalize(const at::Tensor& matrices) {
  TORCH_CHECK_TYPE(matrices.scalar_type() == at::kFloat,
                   "orthonormalize: matrices must be float32, got ", matrices.scalar_type());
  TORCH_CHECK_VALUE(matrices.dim() >= 2 && matrices.numel() >= 1,
                    "orthonormalize: expected a non-empty [..., n, r] tensor, got shape ",
                    matrices.sizes());
}

at::Tensor compress_by_spec(const at::Tensor& input, const std::string& spec, int64_t step,
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

at::Tensor decompress_by_spec(const at::Tensor& payload, const std::string& spec, int64_t numel,
                              int64_t step, int64_t seed, int64_t tensor_key) {
  TORCH_CHECK_VALUE(numel >= 1, "decompress: numel=", numel, " is out of range; valid: >= 1");
  const auto compressor = compressor_for(spec);
  auto out = at::zeros({numel}, payload.options().dtype(at::kFloat));
  compressor->decompress_add(payload.contiguous(), out, context(step, seed, tensor_key, 0));
  return out;
}

}  // namespace gradcomp::ops
