// The CUDA backend of the compressor layer: the torch-free kernels of kernels/cuda, launched on
// the current stream of the tensors' device, with workspaces from torch's caching allocator.
//
// Only generic c10 device APIs are used (DeviceGuard, the CUDA guard implementation's current
// stream and its native handle, c10::Event), so this file compiles against any torch build and
// CI compile-checks it without a CUDA torch; at run time the CUDA torch supplies them.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <map>
#include <memory>
#include <mutex>

#include "compressors/cuda/bucket_device_codec.h"
#include "compressors/cuda/stream.h"
#include "compressors/cuda_kernels.h"
#include "kernels/cuda/kernels.h"

namespace gradcomp {
namespace {

namespace cuda = kernels::cuda;

template <typename T>
T* pointer(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

at::Tensor bytes_on(const at::Device& device, size_t bytes) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   at::TensorOptions().dtype(at::kByte).device(device));
}

// all-ones: no bad index seen (sparse_accumulate records positions with an unsigned atomicMin)
constexpr int64_t kNoBadIndex = -1;

// The device-side record of bad indices met by deferred sparse decodes, and the pinned copy
// through which it is read without waiting: each check reads the copy made by the previous
// check if the device has finished it, then starts the next copy.
struct DeferredIndexCheck {
  at::Tensor flag;
  at::Tensor host;
  std::unique_ptr<c10::Event> copied;
  bool copy_pending = false;
};

class CudaBackend final : public CudaKernels {
 public:
  void topk_select(const at::Tensor& x, const at::Tensor& values,
                   const at::Tensor& indices) const override {
    const c10::DeviceGuard guard(x.device());
    const cudaStream_t stream = current_stream(x.device());
    const int64_t n = x.numel(), k = values.numel();
    TORCH_CHECK_VALUE(n <= INT32_MAX, "topk: tensor has ", n,
                      " elements; valid: at most 2^31-1 (indices are int32)");
    size_t bytes = 0;
    check_launch(
        cuda::topk_select(pointer<const float>(x), n, k, nullptr, nullptr, nullptr, &bytes, stream),
        "topk_select (workspace size)");
    const auto workspace = bytes_on(x.device(), bytes);
    check_launch(cuda::topk_select(pointer<const float>(x), n, k, pointer<float>(values),
                                   pointer<int32_t>(indices), workspace.data_ptr(), &bytes, stream),
                 "topk_select");
  }

  void quantize_encode(QuantizeKind kind, int bits, int64_t chunk, uint64_t key, uint64_t step,
                       const at::Tensor& x, const at::Tensor& payload) const override {
    const c10::DeviceGuard guard(x.device());
    const cudaStream_t stream = current_stream(x.device());
    const float* in = pointer<const float>(x);
    uint8_t* out = pointer<uint8_t>(payload);
    switch (kind) {
      case QuantizeKind::kQsgd:
        return check_launch(cuda::qsgd_encode(in, x.numel(), bits, chunk, key, step, out, stream),
                            "qsgd_encode");
      case QuantizeKind::kSign:
        return check_launch(cuda::sign_encode(in, x.numel(), chunk, out, stream), "sign_encode");
      case QuantizeKind::kInt8:
        return check_launch(cuda::int8_encode(in, x.numel(), chunk, out, stream), "int8_encode");
    }
  }

  void quantize_decode_add(QuantizeKind kind, int bits, int64_t chunk, const at::Tensor& payload,
                           const at::Tensor& out, float alpha) const override {
    const c10::DeviceGuard guard(out.device());
    const cudaStream_t stream = current_stream(out.device());
    const uint8_t* in = pointer<const uint8_t>(payload);
    float* o = pointer<float>(out);
    const int64_t n = out.numel();
    switch (kind) {
      case QuantizeKind::kQsgd:
        return check_launch(cuda::qsgd_decode_add(in, n, bits, chunk, o, alpha, stream),
                            "qsgd_decode_add");
      case QuantizeKind::kSign:
        return check_launch(cuda::sign_decode_add(in, n, chunk, o, alpha, stream),
                            "sign_decode_add");
      case QuantizeKind::kInt8:
        return check_launch(cuda::int8_decode_add(in, n, chunk, o, alpha, stream),
                            "int8_decode_add");
    }
  }

  void cast_encode(const at::Tensor& x, float scale, const at::Tensor& payload) const override {
    const c10::DeviceGuard guard(x.device());
    const cudaStream_t stream = current_stream(x.device());
    auto* out = static_cast<uint16_t*>(payload.data_ptr());
    if (payload.scalar_type() == at::kHalf) {
      check_launch(cuda::fp16_encode(pointer<const float>(x), x.numel(), scale, out, stream),
                   "fp16_encode");
    } else {
      check_launch(cuda::bf16_encode(pointer<const float>(x), x.numel(), scale, out, stream),
                   "bf16_encode");
    }
  }

  void cast_decode_add(const at::Tensor& payload, const at::Tensor& out,
                       float alpha) const override {
    const c10::DeviceGuard guard(out.device());
    const cudaStream_t stream = current_stream(out.device());
    const auto* in = static_cast<const uint16_t*>(payload.data_ptr());
    if (payload.scalar_type() == at::kHalf) {
      check_launch(cuda::fp16_decode_add(in, out.numel(), pointer<float>(out), alpha, stream),
                   "fp16_decode_add");
    } else {
      check_launch(cuda::bf16_decode_add(in, out.numel(), pointer<float>(out), alpha, stream),
                   "bf16_decode_add");
    }
  }

  void randomk_indices(int64_t n, uint64_t key, uint64_t step,
                       const at::Tensor& indices) const override {
    const c10::DeviceGuard guard(indices.device());
    check_launch(cuda::randomk_indices(n, indices.numel(), key, step, pointer<int32_t>(indices),
                                       current_stream(indices.device())),
                 "randomk_indices");
  }

  void randomk_gather(const at::Tensor& x, const at::Tensor& indices, bool unbiased,
                      const at::Tensor& values) const override {
    const c10::DeviceGuard guard(x.device());
    check_launch(cuda::randomk_gather(pointer<const float>(x), x.numel(), values.numel(),
                                      pointer<const int32_t>(indices), unbiased,
                                      pointer<float>(values), current_stream(x.device())),
                 "randomk_gather");
  }

  void sparse_accumulate(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& out,
                         float alpha, bool check, const char* method) const override {
    const at::Device device = out.device();
    const c10::DeviceGuard guard(device);
    const cudaStream_t stream = current_stream(device);
    const int64_t k = values.numel(), n = out.numel();
    if (k == 0) return;
    at::Tensor flag;
    if (check) {
      flag = at::empty({1}, at::TensorOptions().dtype(at::kLong).device(device)).fill_(kNoBadIndex);
    } else {
      flag = deferred(device).flag;
    }
    check_launch(cuda::sparse_accumulate(pointer<const float>(values),
                                         pointer<const int32_t>(indices), k, pointer<float>(out), n,
                                         alpha, pointer<unsigned long long>(flag), stream),
                 "sparse_accumulate");
    if (!check) return;
    const auto bad = flag.item<int64_t>();  // waits for the device: check == true asked for it
    if (bad == kNoBadIndex) return;
    const auto index = indices.narrow(0, bad, 1).item<int32_t>();
    TORCH_CHECK_INDEX(false, method, ": corrupt payload: index ", index, " at position ", bad,
                      " is outside [0, ", n, ") (on CUDA the other entries were applied)");
  }

  void raise_deferred_index_errors(const at::Device& device) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = deferred_.find(device.index());
    if (it == deferred_.end()) return;
    DeferredIndexCheck& state = it->second;
    const c10::DeviceGuard guard(device);
    // Inside a CUDA graph capture the event and the copy would become graph nodes: check at
    // the next encode outside it.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(current_stream(device), &capture) != cudaSuccess ||
        capture != cudaStreamCaptureStatusNone) {
      return;
    }
    if (state.copy_pending) {
      if (!state.copied->query()) return;  // the device is not there yet: check next time
      state.copy_pending = false;
      const int64_t bad = state.host.data_ptr<int64_t>()[0];
      if (bad != kNoBadIndex) {
        // Cleared before raising, so one corrupt payload is reported once, not at every step
        // after it.
        state.flag.fill_(kNoBadIndex);
        TORCH_CHECK_INDEX(false,
                          "gradcomp: a received payload held an index outside its tensor (at "
                          "payload position ",
                          bad,
                          "); it was skipped on the device. A rank sent a corrupt payload or the "
                          "ranks disagree on the model's parameters");
      }
    }
    state.host.copy_(state.flag, /*non_blocking=*/true);
    const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    state.copied->record(impl.getStream(device));
    state.copy_pending = true;
  }

  at::Tensor estimate_threshold(const at::Tensor& x, int64_t target, int64_t samples, uint64_t key,
                                uint64_t step) const override {
    const c10::DeviceGuard guard(x.device());
    const int64_t n = x.numel();
    TORCH_CHECK_VALUE(target >= 1 && target <= n && samples >= 1,
                      "estimate_threshold: need 1 <= target <= n and samples >= 1, got n=", n,
                      " target=", target, " samples=", samples);
    TORCH_CHECK_VALUE(samples >= n || n <= static_cast<int64_t>(UINT32_MAX),
                      "estimate_threshold: n=", n,
                      " is too large to sample (positions are 32-bit)");
    const int64_t count = std::min(samples, n);
    auto keys = at::empty({count}, x.options().dtype(at::kInt));
    check_launch(cuda::sample_magnitude_keys(pointer<const float>(x), n, samples, key, step,
                                             pointer<uint32_t>(keys), current_stream(x.device())),
                 "sample_magnitude_keys");
    // The rank the CPU takes (kernels/cpu/threshold.cpp): target itself for a full sample, else
    // ceil(target * samples / n), clamped to the sample. Keys have bit 31 clear, so sorting them
    // as int32 orders them as the CPU's uint32 keys.
    int64_t rank = target;
    if (samples < n) {
      const uint64_t scaled = static_cast<uint64_t>(target) * static_cast<uint64_t>(samples);
      const auto un = static_cast<uint64_t>(n);
      rank = static_cast<int64_t>(scaled / un + (scaled % un != 0));
    }
    rank = std::min(std::max<int64_t>(rank, 1), count);
    const auto sorted = std::get<0>(keys.sort(/*dim=*/0, /*descending=*/true));
    return sorted.narrow(0, rank - 1, 1).clone();
  }

  at::Tensor select_at_least(const at::Tensor& x, const at::Tensor& threshold_key) const override {
    const c10::DeviceGuard guard(x.device());
    const cudaStream_t stream = current_stream(x.device());
    const int64_t n = x.numel();
    TORCH_CHECK_VALUE(n <= INT32_MAX, "threshold: tensor has ", n,
                      " elements; valid: at most 2^31-1 (indices are int32)");
    auto indices = at::empty({n}, x.options().dtype(at::kInt));
    auto count = at::empty({1}, x.options().dtype(at::kLong));
    const auto* key = pointer<const uint32_t>(threshold_key);
    size_t bytes = 0;
    check_launch(cuda::select_at_least(pointer<const float>(x), n, key, pointer<int32_t>(indices),
                                       pointer<int64_t>(count), nullptr, &bytes, stream),
                 "select_at_least (workspace size)");
    const auto temp = bytes_on(x.device(), bytes);
    check_launch(cuda::select_at_least(pointer<const float>(x), n, key, pointer<int32_t>(indices),
                                       pointer<int64_t>(count), temp.data_ptr(), &bytes, stream),
                 "select_at_least");
    return indices.narrow(0, 0, count.item<int64_t>());  // the one wait: sizes live on the host
  }

  void orthonormalize(const std::vector<at::Tensor>& matrices, int64_t cols) const override {
    if (matrices.empty()) return;
    const at::Device device = matrices.front().device();
    const c10::DeviceGuard guard(device);
    const auto count = static_cast<int64_t>(matrices.size());
    // [pointers..., rows...] in one small host-to-device copy.
    // Pinned, so the copy never waits for the stream (which may be waiting for a collective);
    // the caching host allocator keeps the block until the copy is done.
    auto table = at::empty({2 * count}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* entries = table.data_ptr<int64_t>();
    for (int64_t b = 0; b < count; ++b) {
      entries[b] = reinterpret_cast<int64_t>(matrices[b].data_ptr<float>());
      entries[count + b] = matrices[b].numel() / cols;
    }
    const auto on_device = table.to(table.options().device(device), /*non_blocking=*/true);
    const auto* base = on_device.data_ptr<int64_t>();
    check_launch(cuda::orthonormalize_columns(reinterpret_cast<float* const*>(base), base + count,
                                              count, cols, current_stream(device)),
                 "orthonormalize_columns");
  }

  std::unique_ptr<DeviceBucketCodec> make_bucket_codec(const BucketLayout& layout, uint64_t seed,
                                                       int64_t rank, int64_t world_size,
                                                       const at::Device& device) const override {
    TORCH_CHECK_VALUE(device.is_cuda(), "make_bucket_codec: device ", device, " is not CUDA");
    const c10::DeviceGuard guard(device);
    return make_cuda_bucket_codec(layout, seed, rank, world_size, device, deferred(device).flag);
  }

 private:
  DeferredIndexCheck& deferred(const at::Device& device) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& state = deferred_[device.index()];
    if (!state.flag.defined()) {
      state.flag =
          at::empty({1}, at::TensorOptions().dtype(at::kLong).device(device)).fill_(kNoBadIndex);
      state.host = at::empty({1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      state.copied = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
    }
    return state;
  }

  mutable std::mutex mutex_;
  mutable std::map<c10::DeviceIndex, DeferredIndexCheck> deferred_;
};

// Registers the backend when the library loads (the object library keeps this alive).
// Never destroyed: its tensors, pinned memory and event must not be freed after the CUDA
// runtime has shut down at exit.
const bool kRegistered = [] {
  register_cuda_kernels(new CudaBackend);
  return true;
}();

}  // namespace
}  // namespace gradcomp
