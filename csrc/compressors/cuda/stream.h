// The CUDA backend's two helpers around kernel launches: the current stream of a device, and a
// launch status turned into an error naming the kernel. Generic c10 APIs only, so that the
// backend compiles against a CPU-only torch (see cuda_backend.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace gradcomp {

inline cudaStream_t current_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(impl.getStream(device).native_handle());
}

inline void check_launch(cudaError_t status, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, "gradcomp: CUDA kernel ", kernel,
              " failed to launch: ", cudaGetErrorString(status));
}

}  // namespace gradcomp
