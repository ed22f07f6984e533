#include "compressors/cuda_kernels.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace gradcomp {
namespace {

std::atomic<const CudaKernels*>& registered() {
  static std::atomic<const CudaKernels*> kernels{nullptr};
  return kernels;
}

}  // namespace

void register_cuda_kernels(const CudaKernels* kernels) { registered().store(kernels); }

bool has_cuda_kernels() { return registered().load() != nullptr; }

const CudaKernels& cuda_kernels(const std::string& method) {
  const CudaKernels* kernels = registered().load();
  TORCH_CHECK(kernels != nullptr, method,
              ": this gradcomp build has no CUDA kernels (it was built where nvcc was not on "
              "PATH); reinstall with nvcc available and a CUDA build of torch, e.g. "
              "`pip install --no-build-isolation .` with CUDA_HOME set");
  return *kernels;
}

void check_supported_device(const at::Tensor& t, const std::string& method) {
  if (t.is_cpu()) return;
  TORCH_CHECK(t.is_cuda(), method, ": tensors on ", t.device(),
              " are not supported; valid devices: cpu, cuda");
  cuda_kernels(method);
}

}  // namespace gradcomp
