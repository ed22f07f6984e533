#include "compressors/bucket_codec.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include "compressors/cuda_kernels.h"

namespace gradcomp {
namespace {

constexpr int64_t kByteAlignment = 8;

int64_t align_up(int64_t value, int64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace

uint64_t parameter_key(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void check_entry(const BucketEntry& entry, int64_t& expected_offset) {
  TORCH_CHECK_VALUE(entry.numel >= 1, "bucket codec: parameter '", entry.name,
                    "' has numel=", entry.numel, "; must be >= 1");
  TORCH_CHECK_VALUE(entry.offset >= expected_offset, "bucket codec: parameter '", entry.name,
                    "' starts at ", entry.offset, ", overlapping the previous one (ends at ",
                    expected_offset, ")");
  TORCH_CHECK_VALUE(entry.rows >= 0, "bucket codec: parameter '", entry.name,
                    "' has rows=", entry.rows, "; must be >= 0");
  expected_offset = entry.offset + entry.numel;
}

void check_bucket_tensor(const at::Tensor& bucket, int64_t extent) {
  TORCH_CHECK_VALUE(bucket.dim() == 1 && bucket.is_contiguous(),
                    "gradient bucket must be a contiguous 1-D tensor, got shape ", bucket.sizes());
  TORCH_CHECK_VALUE(bucket.numel() >= extent, "gradient bucket has ", bucket.numel(),
                    " elements but its layout needs ", extent);
  TORCH_CHECK_TYPE(at::isFloatingType(bucket.scalar_type()),
                   "gradient bucket must be floating point, got ", bucket.scalar_type());
}

int64_t Channel::bytes() const { return numel * static_cast<int64_t>(c10::elementSize(dtype)); }

BucketCodec::BucketCodec(std::shared_ptr<const Compressor> compressor,
                         std::vector<BucketEntry> entries,
                         std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed, int64_t rank,
                         int64_t world_size)
    : compressor_(std::move(compressor)), seed_(seed), rank_(rank), world_size_(world_size) {
  TORCH_CHECK_VALUE(compressor_ != nullptr, "BucketCodec: compressor is null");
  TORCH_CHECK_VALUE(world_size >= 1 && rank >= 0 && rank < world_size, "BucketCodec: rank=", rank,
                    " world_size=", world_size, "; valid: 0 <= rank < world_size");
  if (!compressor_->lossless()) error_feedback_ = std::move(error_feedback);

  // Channel 0 is the fp32 allreduce; the payload channel, if separate, comes after it.
  const bool payload_in_dense = compressor_->collective() == Collective::kAllReduce &&
                                compressor_->payload_dtype() == at::kFloat;
  channels_.push_back({Collective::kAllReduce, at::kFloat, 0});
  int64_t payload_channel = 0;
  if (!payload_in_dense) {
    Channel payload{compressor_->collective(), compressor_->payload_dtype(), 0};
    payload.variable = compressor_->variable_size();
    payload.prescaled = compressor_->collective() == Collective::kAllReduce;
    channels_.push_back(payload);
    payload_channel = 1;
  }

  int64_t expected_offset = 0;
  for (auto& entry : entries) {
    check_entry(entry, expected_offset);
    numel_ += entry.numel;

    Placement p{entry, 0, 0, entry.numel, -1, parameter_key(entry.name)};
    if (entry.compress) {
      p.channel = payload_channel;
      p.channel_numel = compressor_->payload_numel(entry.numel);
      if (error_feedback_) p.residual_slot = error_feedback_->slot(entry.name, entry.numel);
    }
    Channel& channel = channels_[p.channel];
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      has_padding_ = has_padding_ || aligned != channel.numel;
      channel.numel = aligned;
    }
    p.channel_offset = channel.numel;
    channel.numel += p.channel_numel;
    placements_.push_back(std::move(p));
  }
  for (auto& channel : channels_) {
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      has_padding_ = has_padding_ || aligned != channel.numel;
      channel.numel = aligned;
    }
  }
  // Drop empty channels, renumbering the placements that point past them.
  std::vector<int64_t> renumber(channels_.size(), -1);
  std::vector<Channel> kept;
  for (size_t i = 0; i < channels_.size(); ++i) {
    if (channels_[i].numel == 0) continue;
    renumber[i] = static_cast<int64_t>(kept.size());
    kept.push_back(channels_[i]);
  }
  channels_ = std::move(kept);
  for (auto& p : placements_) p.channel = renumber[p.channel];
  // The bucket may hold padding between parameters; numel_ counts gradient elements only.
  bucket_extent_ = expected_offset;
}

int64_t BucketCodec::bytes_sent() const {
  int64_t total = 0;
  for (const auto& channel : channels_) total += channel.bytes();
  return total;
}

void BucketCodec::check_bucket(const at::Tensor& bucket) const {
  check_bucket_tensor(bucket, bucket_extent_);
}

CompressContext BucketCodec::context(const Placement& p, int64_t step) const {
  CompressContext ctx{seed_, step, p.tensor_key, rank_, 1.0};
  ctx.defer_checks = true;  // a decode in the hot path never waits for the device
  if (channels_[p.channel].prescaled) ctx.prescale = 1.0 / static_cast<double>(world_size_);
  return ctx;
}

std::vector<at::Tensor> BucketCodec::encode(const at::Tensor& bucket, int64_t step) const {
  check_bucket(bucket);
  // Corrupt indices met by earlier steps' decodes on this device surface here, once the device
  // has finished them (see CudaKernels::sparse_accumulate).
  if (bucket.is_cuda())
    cuda_kernels(compressor_->name()).raise_deferred_index_errors(bucket.device());
  std::vector<at::Tensor> messages;
  messages.reserve(channels_.size());
  for (const auto& channel : channels_) {
    const auto options = at::TensorOptions().dtype(channel.dtype).device(bucket.device());
    // Zero padding so that what crosses the wire is fully determined.
    messages.push_back(has_padding_ && channel.dtype == at::kByte
                           ? at::zeros({channel.numel}, options)
                           : at::empty({channel.numel}, options));
  }
  // Variable channels are packed as they fill: each payload starts 8-byte aligned after the
  // previous one's used length instead of at its placement's fixed offset.
  std::vector<int64_t> cursor(channels_.size(), 0);
  for (const auto& p : placements_) {
    const auto source = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const bool variable = channels_[p.channel].variable;
    const int64_t offset =
        variable ? align_up(cursor[p.channel], kByteAlignment) : p.channel_offset;
    const auto target = messages[p.channel].narrow(0, offset, p.channel_numel);
    if (!p.entry.compress) {
      target.copy_(source);
      continue;
    }
    const auto grad = source.scalar_type() == at::kFloat ? source : source.to(at::kFloat);
    const CompressContext ctx = context(p, step);
    int64_t used;
    if (p.residual_slot >= 0) {
      const auto residual = error_feedback_->residual(p.residual_slot, bucket.device());
      used = compressor_->compress_with_feedback(grad, residual, target, ctx);
    } else {
      used = compressor_->compress(grad, target, ctx);
    }
    cursor[p.channel] = offset + used;
  }
  for (size_t i = 0; i < channels_.size(); ++i) {
    if (!channels_[i].variable) continue;
    const int64_t length = align_up(cursor[i], kByteAlignment);
    // The alignment gap after the last payload must be zero like any other padding.
    messages[i].narrow(0, cursor[i], length - cursor[i]).zero_();
    messages[i] = messages[i].narrow(0, 0, length);
  }
  return messages;
}

void BucketCodec::decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                         int64_t step, const std::vector<int64_t>& used) const {
  check_bucket(bucket);
  TORCH_CHECK_VALUE(received.size() == channels_.size(), "decode: got ", received.size(),
                    " tensors for ", channels_.size(), " channels");
  const int64_t world = world_size_;
  std::vector<int64_t> stride(channels_.size());
  for (size_t i = 0; i < channels_.size(); ++i) {
    const auto& channel = channels_[i];
    TORCH_CHECK_VALUE(received[i].scalar_type() == channel.dtype && received[i].dim() == 1 &&
                          received[i].is_contiguous(),
                      "decode: channel ", i, " (", collective_name(channel.collective),
                      ") must be a contiguous 1-D ", channel.dtype, " tensor, got ",
                      received[i].scalar_type(), " of shape ", received[i].sizes());
    if (channel.variable) {
      TORCH_CHECK_VALUE(static_cast<int64_t>(used.size()) == world,
                        "decode: a variable-size channel needs one used length per rank (", world,
                        "), got ", used.size());
      TORCH_CHECK_VALUE(received[i].numel() % world == 0, "decode: variable channel of ",
                        received[i].numel(), " elements does not split into ", world, " ranks");
      stride[i] = received[i].numel() / world;
      for (int64_t r = 0; r < world; ++r) {
        TORCH_CHECK_VALUE(used[r] >= 0 && used[r] <= stride[i] && used[r] <= channel.numel,
                          "decode: rank ", r, " used ", used[r], " elements; valid: 0 to ",
                          std::min(stride[i], channel.numel));
      }
      continue;
    }
    const int64_t expected =
        channel.collective == Collective::kAllGather ? world * channel.numel : channel.numel;
    TORCH_CHECK_VALUE(received[i].numel() == expected, "decode: channel ", i, " (",
                      collective_name(channel.collective), ") must have ", expected,
                      " elements, got ", received[i].numel());
    stride[i] = channel.numel;
    // Summed channels are averaged once, before unpacking (decompression is linear).
    if (channel.collective == Collective::kAllReduce && !channel.prescaled) {
      received[i].div_(world);
    }
  }
  // Per channel and rank: where the next payload of a variable channel starts.
  std::vector<std::vector<int64_t>> cursor(channels_.size(), std::vector<int64_t>(world, 0));
  for (const auto& p : placements_) {
    const auto target = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const auto& message = received[p.channel];
    const auto& channel = channels_[p.channel];
    if (!p.entry.compress) {
      target.copy_(message.narrow(0, p.channel_offset, p.channel_numel));
      continue;
    }
    const bool in_place = target.scalar_type() == at::kFloat;
    const auto out =
        in_place ? target : at::empty({p.entry.numel}, target.options().dtype(at::kFloat));
    out.zero_();
    const CompressContext ctx = context(p, step);
    if (channel.collective == Collective::kAllReduce) {
      compressor_->decompress_add(message.narrow(0, p.channel_offset, p.channel_numel), out, ctx);
    } else {
      for (int64_t r = 0; r < world; ++r) {
        const int64_t base = r * stride[p.channel];
        CompressContext sender = ctx;
        sender.rank = r;
        if (channel.variable) {
          int64_t& at = cursor[p.channel][r];
          at = align_up(at, kByteAlignment);
          TORCH_CHECK_VALUE(at < used[r], "decode: rank ", r, "'s payload ends (", used[r],
                            " bytes) before parameter '", p.entry.name, "'");
          at +=
              compressor_->decompress_add(message.narrow(0, base + at, used[r] - at), out, sender);
        } else {
          compressor_->decompress_add(message.narrow(0, base + p.channel_offset, p.channel_numel),
                                      out, sender);
        }
      }
      out.div_(world);
    }
    if (!in_place) target.copy_(out);
  }
}

}  // namespace gradcomp
