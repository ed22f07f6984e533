// The schemas of torch.ops.gradcomp.*, in one place. Backends register kernels in ops/<backend>/;
// fake (meta) kernels for tracing live in python/gradcomp/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(gradcomp, m) {
  // The k largest-magnitude elements of input (read flat): float32 values [k] and int32
  // indices [k] in ascending index order. Ties go to the lower index; NaN ranks above inf.
  m.def("topk_compress(Tensor input, int k) -> (Tensor values, Tensor indices)");
  // A dense float32 tensor of numel elements holding values at indices (repeats accumulate).
  m.def("topk_decompress(Tensor values, Tensor indices, int numel) -> Tensor");
  // Any per-tensor method by spec ("qsgd:bits=4"): the payload of input (read flat, float32),
  // as the DDP hook would send it. (step, seed, tensor_key, rank) feed the stochastic methods.
  m.def(
      "compress(Tensor input, str spec, int step=0, int seed=0, int tensor_key=0, int rank=0) "
      "-> Tensor");
  // The flat float32 tensor of numel elements that payload decodes to (same spec and context).
  m.def(
      "decompress(Tensor payload, str spec, int numel, int step=0, int seed=0, int tensor_key=0) "
      "-> Tensor");
  // PowerSGD's orthonormalization: the columns of each [..., n, r] matrix made orthonormal
  // (modified Gram-Schmidt; dependent columns become zero).
  m.def("orthonormalize(Tensor matrices) -> Tensor");
}
