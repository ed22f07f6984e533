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
};

struct Channel {
  Collective collective;
  at::ScalarType dtype;
  int64_t numel;  // elements this rank sends
  int64_t bytes() const;
};

class BucketCodec {
 public:
  // error_feedback may be null (no error feedback); it is not used for lossless methods.
  BucketCodec(std::shared_ptr<const Compressor> compressor, std::vector<BucketEntry> entries,
              std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed);

  const std::vector<Channel>& channels() const { return channels_; }
  // What this rank hands to the collectives per step, and what a dense fp32 allreduce of the
  // same gradients would hand over.
  int64_t bytes_sent() const;
  int64_t dense_bytes() const { return 4 * numel_; }
  int64_t numel() const { return numel_; }

  // One tensor per channel, on the bucket's device.
  std::vector<at::Tensor> encode(const at::Tensor& bucket, int64_t step) const;
  // received[i] is channel i after its collective: the sum over ranks (allreduce, numel
  // elements; divided in place by world_size here) or every rank's tensor back to back
  // (allgather, world_size * numel elements). Writes the averaged gradient into bucket.
  void decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
              int64_t world_size) const;

 private:
  struct Placement {
    BucketEntry entry;
    int64_t channel;
    int64_t channel_offset;  // in elements of the channel's dtype
    int64_t channel_numel;
    int64_t residual_slot;  // -1: no error feedback
    uint64_t tensor_key;
  };

  void check_bucket(const at::Tensor& bucket) const;

  std::shared_ptr<const Compressor> compressor_;
  std::shared_ptr<ErrorFeedback> error_feedback_;
  uint64_t seed_;
  std::vector<Placement> placements_;
  std::vector<Channel> channels_;
  bool has_padding_ = false;
  int64_t numel_ = 0;          // gradient elements covered by the entries
  int64_t bucket_extent_ = 0;  // one past the last element the entries cover
};

}  // namespace gradcomp
