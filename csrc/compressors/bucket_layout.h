// Where every entry of one DDP gradient bucket travels: which method compresses it, which
// message (channel) carries its payload and at what offset. Built once per bucket layout, by
// the host; BucketCodec runs it, on the CPU entry by entry and on CUDA through the device
// tables its CUDA backend builds from it (compressors/cuda_kernels.h).
//
// Channels: tensors below the size cut (entry.compress == false) and payloads of methods that
// are summable in fp32 share one float32 allreduce channel; other payloads travel in a channel
// of their own collective and dtype. Byte payloads are 8-byte aligned in their channel so that
// decoders may read floats and ints in place; the padding is zero and counted as sent.
// Low-precision allreduce payloads (fp16, bf16) are encoded pre-divided by the world size, as
// PyTorch's fp16 hook does, so their sum cannot overflow; fp32 channels are divided after.
// Variable-size payloads (threshold) are packed back to back in their channel, which then has
// a different length on every rank. The first channel starts with the non-finite flag slot
// (one element; 8 bytes in a byte channel).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compressors/compressor.h"
#include "compressors/error_feedback.h"

namespace gradcomp {

// Byte payloads start at multiples of this in their channel, so decoders read floats and ints in
// place; a byte channel's flag slot takes this many bytes.
constexpr int64_t kByteAlignment = 8;

inline int64_t align_up(int64_t value, int64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

struct BucketEntry {
  std::string name;    // fully qualified parameter name
  int64_t offset = 0;  // first element in the bucket's flat buffer
  int64_t numel = 0;
  bool compress = true;  // false: sent dense in the fp32 allreduce channel
  int64_t rows = 0;      // first dimension of the parameter (PowerSGD's matrix view); 0: 1-D
  int64_t method = 0;    // index of the entry's compressor in the codec's list (when compress)
};

struct Channel {
  Collective collective;
  at::ScalarType dtype;
  int64_t numel;           // elements this rank sends (variable: the most it can send)
  bool variable = false;   // length differs per rank and step
  bool prescaled = false;  // payloads encode x / world_size; the sum is the average
  int64_t bytes() const;
};

struct Placement {
  BucketEntry entry;
  const Compressor* method;  // null: sent dense
  int64_t channel;
  int64_t channel_offset;  // in elements of the channel's dtype
  int64_t channel_numel;
  int64_t residual_slot;  // -1: no error feedback
  uint64_t tensor_key;
};

struct BucketLayout {
  std::vector<Placement> placements;  // in bucket order
  std::vector<Channel> channels;
  int64_t flag_numel = 0;    // the non-finite flag slot at the start of channel 0
  bool has_padding = false;  // some byte channel holds alignment padding
  int64_t numel = 0;         // gradient elements covered by the entries
  int64_t extent = 0;        // one past the last element the entries cover
  bool variable = false;     // some channel is variable-size (its decode reads lengths)
  bool all_dense = false;    // every entry travels uncompressed in the fp32 allreduce
};

// The layout of `entries` (in bucket order, non-overlapping) compressed by `methods` (entry i
// by methods[entries[i].method] when entries[i].compress). Residual slots are taken from
// error_feedback (may be null) for every lossy compressed entry. Errors name the parameter.
BucketLayout make_bucket_layout(const std::vector<std::shared_ptr<const Compressor>>& methods,
                                const std::vector<BucketEntry>& entries,
                                ErrorFeedback* error_feedback);

// A stable per-name key for counter-based RNGs (FNV-1a; std::hash may differ between builds).
uint64_t parameter_key(const std::string& name);
// Checks an entry against the end of the previous one (updated); errors name the parameter.
void check_entry(const BucketEntry& entry, int64_t& expected_offset);
// Checks that a bucket is a contiguous 1-D floating tensor of at least `extent` elements.
void check_bucket_tensor(const at::Tensor& bucket, int64_t extent);

}  // namespace gradcomp
