// The device-independent halves of the ops: argument checks (so every backend rejects the same
// inputs with the same message) and the by-spec methods, which the compressor layer runs on
// any supported device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace gradcomp::ops {

// topk_compress: float32 input of 1 to 2^31-1 elements, 1 <= k <= numel.
void check_topk_compress(const at::Tensor& input, int64_t k);
// topk_decompress: float32 values and int32 indices, 1-D, equal length; 1 <= numel < 2^31.
void check_topk_decompress(const at::Tensor& values, const at::Tensor& indices, int64_t numel);
// orthonormalize: a non-empty float32 [..., n, r] tensor.
void check_orthonormalize(const at::Tensor& matrices);

at::Tensor compress_by_spec(const at::Tensor& input, const std::string& spec, int64_t step,
                            int64_t seed, int64_t tensor_key, int64_t rank);
at::Tensor decompress_by_spec(const at::Tensor& payload, const std::string& spec, int64_t numel,
                              int64_t step, int64_t seed, int64_t tensor_key);

}  // namespace gradcomp::ops
