// Turns one DDP gradient bucket into the few flat messages that cross the network, and back.
//
// Built once per bucket layout. encode() compensates (error feedback), compresses and packs
// every parameter of the bucket into one tensor per channel; decode() unpacks what the
// collectives returned, decompresses every rank's payload, sums, averages and writes the
// result into the bucket. One C++ call per bucket per phase, however many parameters it holds.
//
// Channels: tensors below the size cut (entry.compress == false) and payloads of methods that
// are summable in fp32 share one float32 allreduce channel; other payloads travel in a channel
// of their own collective and dtype. Byte payloads are 8-byte aligned in their channel so that
// decoders may read floats and ints in place; the padding is zero and counted as sent.
// Low-precision allreduce payloads (fp16, bf16) are encoded pre-divided by the world size, as
// PyTorch's fp16 hook does, so their sum cannot overflow; fp32 channels are divided after.
// Variable-size payloads (threshold) are packed back to back in their channel, which then has
// a different length on every rank: the caller exchanges the lengths first (see decode).
//
// Non-finite gradients: the first channel starts with a flag slot (one element; 8 bytes in a
// byte channel) that a rank sets when its bucket holds an inf or NaN. Such a rank sends zero
// payloads and leaves its residuals as they were; once the flags have crossed the wire every
// rank fills the bucket with NaN, as a dense allreduce would spread the inf, so GradScaler (or
// any finite check) skips the step on every rank alike. See docs/design.md.
//
// Several methods per bucket (per-parameter overrides): each entry names its method by index;
// payloads of methods that travel alike (collective, dtype, variable size) share a channel.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "compressors/compressor.h"
#include "compressors/error_feedback.h"

namespace gradcomp {

struct BucketEntry {
  std::string name;    // fully qualified parameter name
  int64_t offset = 0;  // first element in the bucket's flat buffer
  int64_t numel = 0;
  bool compress = true;  // false: sent dense in the fp32 allreduce channel
  int64_t rows = 0;      // first dimension of the parameter (PowerSGD's matrix view); 0: 1-D
  int64_t method = 0;    // index of the entry's compressor in the codec's list (when compress)
};

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

// A stable per-name key for counter-based RNGs (FNV-1a; std::hash may differ between builds).
uint64_t parameter_key(const std::string& name);
// Checks an entry against the end of the previous one (updated); errors name the parameter.
void check_entry(const BucketEntry& entry, int64_t& expected_offset);
// Checks that a bucket is a contiguous 1-D floating tensor of at least `extent` elements.
void check_bucket_tensor(const at::Tensor& bucket, int64_t extent);
// True when every element is finite. One sum in the common case (a sum is finite only if every
// term is); the exact test only when the sum overflowed. Waits for the device on CUDA.
bool all_finite(const at::Tensor& values);
// sum(values^2), accumulated in double (the codecs' measure=true norms). Waits on CUDA.
double squared_sum(const at::Tensor& values);

struct Channel {
  Collective collective;
  at::ScalarType dtype;
  int64_t numel;           // elements this rank sends (variable: the most it can send)
  bool variable = false;   // length differs per rank and step
  bool prescaled = false;  // payloads encode x / world_size; the sum is the average
  int64_t bytes() const;
};

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

  const std::vector<Channel>& channels() const { return channels_; }
  // What this rank hands to the collectives per step (for a variable channel: the most it can),
  // and what a dense fp32 allreduce of the same gradients would hand over.
  int64_t bytes_sent() const;
  int64_t world_size() const { return world_size_; }
  int64_t dense_bytes() const { return 4 * numel_; }
  int64_t numel() const { return numel_; }

  // One tensor per channel, on the bucket's device; a variable channel's tensor holds exactly
  // what this rank used this step. With measure, also computes measured() (waits for the
  // device on CUDA).
  std::vector<at::Tensor> encode(const at::Tensor& bucket, int64_t step,
                                 bool measure = false) const;
  // The norms of the last encode(..., measure=true).
  CodecMeasure measured() const { return measured_; }
  // received[i] is channel i after its collective: the sum over ranks (allreduce, numel
  // elements; divided in place by world_size here unless prescaled) or every rank's tensor back
  // to back (allgather, world_size * numel elements). For a variable channel every rank's
  // tensor is zero-padded to a common stride (received numel = world_size * stride) and
  // used[r] says how much of rank r's is payload. Writes the averaged gradient into bucket.
  DecodeOutcome decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                       int64_t step, const std::vector<int64_t>& used = {}) const;

 private:
  struct Placement {
    BucketEntry entry;
    const Compressor* method;  // null: sent dense
    int64_t channel;
    int64_t channel_offset;  // in elements of the channel's dtype
    int64_t channel_numel;
    int64_t residual_slot;  // -1: no error feedback
    uint64_t tensor_key;
  };

  void check_bucket(const at::Tensor& bucket) const;
  CompressContext context(const Placement& p, int64_t step) const;

  std::vector<std::shared_ptr<const Compressor>> compressors_;
  std::shared_ptr<ErrorFeedback> error_feedback_;
  uint64_t seed_;
  int64_t rank_;
  int64_t world_size_;
  std::vector<Placement> placements_;
  std::vector<Channel> channels_;
  bool has_padding_ = false;
  int64_t flag_numel_ = 0;  // the non-finite flag at the start of channel 0
  mutable CodecMeasure measured_;
  int64_t numel_ = 0;          // gradient elements covered by the entries
  int64_t bucket_extent_ = 0;  // one past the last element the entries cover
};

}  // namespace gradcomp
