// The schemas of torch.ops.gradcomp.*, in one place. Backends register kernels in ops/<backend>/;
// fake (meta) kernels for tracing live in python/gradcomp/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(gradcomp, m) {
  // The k largest-magnitude elements of input (read flat): float32 values [k] and int32
  // indices [k] in ascending index order. Ties go to the lower index; NaN ranks above inf.
  m.def("topk_compress(Tensor input, int k) -> (Tensor values, Tensor indices)");
  // A dense float32 tensor of numel elements holding values at indices (repeats accumulate).
  m.def("topk_decompress(Tensor values, Tensor indices, int numel) -> Tensor");
}
