// The CUDA calls compressors make, behind an interface so that the compressor layer builds
// (and its tests link) without CUDA. The implementation, compressors/cuda/cuda_backend.cpp, is
// compiled only when nvcc built the CUDA kernels and registers itself when the library loads;
// without it, cuda_kernels() explains how to get a CUDA build.
//
// Every tensor is a contiguous 1-D tensor on one CUDA device (the caller checks); the calls
// enqueue work on that device's current stream and never wait for it, except where a comment
// says so.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compressors/bucket_layout.h"

namespace gradcomp {

enum class QuantizeKind { kQsgd, kSign, kInt8 };

// The bucket-level device path of one bucket layout on one CUDA device (BucketCodec's, see
// bucket_codec.h): every entry of a bucket encoded and decoded at once by segmented kernels
// driven by tables built once from the layout, a fixed number of launches per method whatever
// the number of parameters, workspaces kept from step to step (Top-K's candidate lists come
// from torch's caching allocator, so buckets share that memory), nothing waits for the device.
// Every tensor is on that device; launches go to its current stream.
class DeviceBucketCodec {
 public:
  virtual ~DeviceBucketCodec() = default;
  // residuals[i]: placement i's float32 residual, undefined without error feedback. Kept until
  // the next call; call again whenever a residual's storage changes.
  virtual void bind_residuals(const std::vector<at::Tensor>& residuals) = 0;
  // Writes every channel's payload into messages (the codec's zero-initialised buffers, one per
  // channel); bytes no payload covers are never written. scale_ratio: a one-element float32
  // tensor multiplying every residual first (undefined: 1). The non-finite check, its flag slot
  // and every decision that depends on it run on the device.
  virtual void encode(const at::Tensor& bucket, const std::vector<at::Tensor>& messages,
                      const at::Tensor& scale_ratio, int64_t step) = 0;
  // received[i]: channel i after its collective (shapes checked by the caller). Writes the
  // averaged gradient, or NaN everywhere when some rank's flag is set, into the bucket. Corrupt
  // indices are recorded for CudaKernels::raise_deferred_index_errors.
  virtual void decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                      int64_t step) = 0;
};

class CudaKernels {
 public:
  virtual ~CudaKernels() = default;

  // Exact Top-K of x by magnitude (kernels/cpu/topk.h semantics) into values (float32, k) and
  // indices (int32, k).
  virtual void topk_select(const at::Tensor& x, const at::Tensor& values,
                           const at::Tensor& indices) const = 0;

  // Chunked quantizers (kernels/cpu/quantize.h layouts); key is only used by QSGD.
  virtual void quantize_encode(QuantizeKind kind, int bits, int64_t chunk, uint64_t key,
                               uint64_t step, const at::Tensor& x,
                               const at::Tensor& payload) const = 0;
  // out += alpha * decode(payload).
  virtual void quantize_decode_add(QuantizeKind kind, int bits, int64_t chunk,
                                   const at::Tensor& payload, const at::Tensor& out,
                                   float alpha) const = 0;

  // payload (float16 or bfloat16) <- scale * x, bit-identical to the CPU; out += alpha * payload.
  virtual void cast_encode(const at::Tensor& x, float scale, const at::Tensor& payload) const = 0;
  virtual void cast_decode_add(const at::Tensor& payload, const at::Tensor& out,
                               float alpha) const = 0;

  // Random-K: the CPU's indices for the same (n, key, step), into indices (int32, k).
  virtual void randomk_indices(int64_t n, uint64_t key, uint64_t step,
                               const at::Tensor& indices) const = 0;
  virtual void randomk_gather(const at::Tensor& x, const at::Tensor& indices, bool unbiased,
                              const at::Tensor& values) const = 0;

  // out[indices[i]] += alpha * values[i]. An index outside [0, out.numel()) is skipped on the
  // device, never written. With check == true this call waits for the device and raises naming
  // `method`; otherwise the position is kept on the device and raised by a later
  // raise_deferred_index_errors() once the device has got there, so the hot path never waits.
  virtual void sparse_accumulate(const at::Tensor& values, const at::Tensor& indices,
                                 const at::Tensor& out, float alpha, bool check,
                                 const char* method) const = 0;
  // Raises if a deferred sparse_accumulate on `device` met a bad index and the device has
  // finished it; never waits for the device.
  virtual void raise_deferred_index_errors(const at::Device& device) const = 0;

  // The threshold estimate of kernels/cpu/threshold.h (estimate_threshold: same sample, same
  // key) as a one-element int32 tensor on the device, holding the magnitude key.
  virtual at::Tensor estimate_threshold(const at::Tensor& x, int64_t target, int64_t samples,
                                        uint64_t key, uint64_t step) const = 0;
  // Every i with magnitude_key(x[i]) >= threshold_key[0] (a device tensor from
  // estimate_threshold, or made from a fixed tau), ascending, as int32 indices; the count is
  // the returned tensor's length, so this call waits for the device once.
  virtual at::Tensor select_at_least(const at::Tensor& x,
                                     const at::Tensor& threshold_key) const = 0;

  // Modified Gram-Schmidt on the columns of each row-major [rows_b x cols] matrix in place,
  // with the CPU kernel's rule for dependent columns; one launch for all of them.
  virtual void orthonormalize(const std::vector<at::Tensor>& matrices, int64_t cols) const = 0;

  // The device path of a layout whose every compressed placement has a DeviceEncoding (no
  // variable-size channel) on `device`.
  virtual std::unique_ptr<DeviceBucketCodec> make_bucket_codec(const BucketLayout& layout,
                                                               uint64_t seed, int64_t rank,
                                                               int64_t world_size,
                                                               const at::Device& device) const = 0;
};

// Called once by the CUDA backend when the library loads.
void register_cuda_kernels(const CudaKernels* kernels);
// True when this build has the CUDA backend.
bool has_cuda_kernels();
// The CUDA backend; throws, naming `method`, when this build has none.
const CudaKernels& cuda_kernels(const std::string& method);

// Throws unless t is on the CPU or on CUDA with a CUDA backend built in; names the method and
// the device.
void check_supported_device(const at::Tensor& t, const std::string& method);

}  // namespace gradcomp
