// Turns one DDP gradient bucket into the few flat messages that cross the network, and back:
// the bucket plan of shared/DESIGN.md. Built once per bucket layout (bucket_layout.h says where
// every entry travels); it keeps the message buffers, the receive buffers of gathered channels
// and, on CUDA, the device tables and workspaces of the bucket-level kernels, and reuses them
// every step.
//
// encode() compensates (error feedback), compresses and packs every parameter of the bucket into
// one tensor per channel; decode() unpacks what the collectives returned, decompresses every
// rank's payload, sums, averages and writes the result into the bucket. One C++ call per bucket
// per phase, however many parameters it holds.
//
// Two ways to run it, with the same bits:
//   - entry by entry (the CPU; CUDA buckets that hold a variable-size method, and steps that
//     measure the compression error): one compressor call per parameter;
//   - on CUDA otherwise, the device path (compressors/cuda_kernels.h, DeviceBucketCodec):
//     segmented kernels over all entries of a method at once, a fixed number of launches per
//     bucket, no allocation and no wait for the device; the non-finite check and the loss-scale
//     ratio stay on the device.
//
// Non-finite gradients: the first channel starts with a flag slot (one element; 8 bytes in a
// byte channel) that a rank sets when its bucket holds an inf or NaN. Such a rank sends zero
// payloads and leaves its residuals as they were; once the flags have crossed the wire every
// rank fills the bucket with NaN, as a dense allreduce would spread the inf, so GradScaler (or
// any finite check) skips the step on every rank alike. See docs/design.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compressors/bucket_layout.h"
#include "compressors/compressor.h"
#include "compressors/error_feedback.h"

namespace gradcomp {

class DeviceBucketCodec;

// Squared norms a codec measured on request: of what went into compression (the compensated
// gradient; dense tensors as they are) and of what compression dropped from it.
struct CodecMeasure {
  double input_sq = 0.0;
  double error_sq = 0.0;
};

// What decode() found in the non-finite flags of every rank.
enum class DecodeOutcome : int {
  kUnchecked = -1,  // CUDA: the flags were applied on the device; the host did not wait to see
  kNonFinite = 0,   // some rank's bucket held an inf or NaN: the bucket is now all NaN
  kFinite = 1,
};

// True when every element is finite. One sum in the common case (a sum is finite only if every
// term is); the exact test only when the sum overflowed. Waits for the device on CUDA.
bool all_finite(const at::Tensor& values);
// sum(values^2), accumulated in double (the codecs' measure=true norms). Waits on CUDA.
double squared_sum(const at::Tensor& values);

class BucketCodec {
 public:
  // error_feedback may be null (no error feedback); it is not used for lossless methods.
  // rank and world_size are this process's place in the group the messages travel in.
  BucketCodec(std::shared_ptr<const Compressor> compressor, std::vector<BucketEntry> entries,
              std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed, int64_t rank = 0,
              int64_t world_size = 1);
  // One method per entry: entries[i].method indexes `compressors`.
  BucketCodec(std::vector<std::shared_ptr<const Compressor>> compressors,
              std::vector<BucketEntry> entries, std::shared_ptr<ErrorFeedback> error_feedback,
              uint64_t seed, int64_t rank = 0, int64_t world_size = 1);
  ~BucketCodec();

  const std::vector<Channel>& channels() const { return layout_.channels; }
  const BucketLayout& layout() const { return layout_; }
  // What this rank hands to the collectives per step (for a variable channel: the most it can),
  // and what a dense fp32 allreduce of the same gradients would hand over.
  int64_t bytes_sent() const;
  int64_t world_size() const { return world_size_; }
  int64_t dense_bytes() const { return 4 * layout_.numel; }
  int64_t numel() const { return layout_.numel; }
  // Every entry travels uncompressed in the fp32 allreduce: the bucket could be allreduced as
  // it is, the way DDP does (the hook does so).
  bool all_dense() const { return layout_.all_dense; }
  // Whether encode/decode of a bucket on `device` run the bucket-level device path.
  bool uses_device_path(const at::Device& device) const;

  // One tensor per channel, on the bucket's device: the codec's own buffers, reused by the next
  // encode (keep them only until the step's collectives and decode are done). A variable
  // channel's tensor holds exactly what this rank used this step. scale_ratio (a one-element
  // float32 tensor on the bucket's device, or nullopt for 1) multiplies every residual before
  // the gradient is added: the loss-scale change since the previous step, read on the device.
  // With measure, also computes measured() (waits for the device on CUDA).
  std::vector<at::Tensor> encode(const at::Tensor& bucket, int64_t step, bool measure = false,
                                 const std::optional<at::Tensor>& scale_ratio = std::nullopt);
  // The norms of the last encode(..., measure=true).
  CodecMeasure measured() const { return measured_; }
  // Where an allgather of channel i can write: world_size * channel numel elements, the codec's
  // own buffer on the device of the last encode (reused every step).
  at::Tensor gather_buffer(int64_t channel) const;
  // received[i] is channel i after its collective: the sum over ranks (allreduce, numel
  // elements; averaged here unless prescaled) or every rank's tensor back to back (allgather,
  // world_size * numel elements). For a variable channel every rank's tensor is zero-padded to
  // a common stride (received numel = world_size * stride) and used[r] says how much of rank
  // r's is payload. Writes the averaged gradient into bucket.
  DecodeOutcome decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                       int64_t step, const std::vector<int64_t>& used = {});

 private:
  // Buffers and device state for one device, made at the first encode there.
  struct DeviceState {
    at::Device device{at::kCPU};
    std::vector<at::Tensor> messages;
    std::vector<at::Tensor> gathered;  // undefined for allreduce and variable channels
    std::unique_ptr<DeviceBucketCodec> device_codec;
    uint64_t residual_generation = ~uint64_t{0};
  };

  void check_bucket(const at::Tensor& bucket) const;
  CompressContext context(const Placement& p, int64_t step) const;
  DeviceState& state_for(const at::Device& device);
  void encode_entries(const at::Tensor& bucket, int64_t step, bool measure,
                      const std::optional<at::Tensor>& scale_ratio,
                      std::vector<at::Tensor>& messages);
  void encode_on_device(const at::Tensor& bucket, int64_t step,
                        const std::optional<at::Tensor>& scale_ratio, DeviceState& state);
  // The received tensors' shapes; returns every channel's per-rank stride.
  std::vector<int64_t> check_received(const std::vector<at::Tensor>& received,
                                      const std::vector<int64_t>& used) const;
  DecodeOutcome decode_entries(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                               int64_t step, const std::vector<int64_t>& used,
                               const std::vector<int64_t>& stride) const;

  std::vector<std::shared_ptr<const Compressor>> compressors_;
  std::shared_ptr<ErrorFeedback> error_feedback_;
  uint64_t seed_;
  int64_t rank_;
  int64_t world_size_;
  BucketLayout layout_;
  bool device_capable_ = false;  // every compressed entry has a DeviceEncoding
  std::unique_ptr<DeviceState> state_;
  CodecMeasure measured_;
};

}  // namespace gradcomp
