// CPU kernels of the generic ops: any per-tensor method by spec, and PowerSGD's batched
// orthonormalization.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "compressors/aten_task_runner.h"
#include "kernels/cpu/orthonormalize.h"
#include "ops/common.h"

namespace gradcomp::ops {
namespace {

at::Tensor orthonormalize_cpu(const at::Tensor& matrices) {
  check_orthonormalize(matrices);
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
  m.impl("compress", &compress_by_spec);
  m.impl("decompress", &decompress_by_spec);
  m.impl("orthonormalize", &orthonormalize_cpu);
}

}  // namespace gradcomp::ops
