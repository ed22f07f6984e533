// The CUDA implementation of DeviceBucketCodec (compressors/cuda_kernels.h), made by the CUDA
// backend (cuda_backend.cpp) for one bucket layout on one device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "compressors/bucket_layout.h"
#include "compressors/cuda_kernels.h"

namespace gradcomp {

// first_bad: the backend's device-side record of corrupt indices (one int64, all bits set when
// none), where decodes record what they skip.
std::unique_ptr<DeviceBucketCodec> make_cuda_bucket_codec(const BucketLayout& layout, uint64_t seed,
                                                          int64_t rank, int64_t world_size,
                                                          const at::Device& device,
                                                          at::Tensor first_bad);

}  // namespace gradcomp
