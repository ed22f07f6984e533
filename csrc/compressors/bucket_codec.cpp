#include "compressors/bucket_codec.h"

#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

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

double squared_sum(const at::Tensor& values) {
  return values.to(at::kDouble).square().sum().item<double>();
}

bool all_finite(const at::Tensor& values) {
  if (values.numel() == 0) return true;
  if (std::isfinite(values.sum(at::kFloat).item<float>())) return true;
  return at::isfinite(values).all().item<bool>();
}

int64_t Channel::bytes() const { return numel * static_cast<int64_t>(c10::elementSize(dtype)); }

BucketCodec::BucketCodec(std::shared_ptr<const Compressor> compressor,
                         std::vector<BucketEntry> entries,
                         std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed, int64_t rank,
                         int64_t world_size)
    : BucketCodec(std::vector<std::shared_ptr<const Compressor>>{std::move(compressor)},
                  std::move(entries), std::move(error_feedback), seed, rank, world_size) {}

BucketCodec::BucketCodec(std::vector<std::shared_ptr<const Compressor>> compressors,
                         std::vector<BucketEntry> entries,
                         std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed, int64_t rank,
                         int64_t world_size)
    : compressors_(std::move(compressors)),
      error_feedback_(std::move(error_feedback)),
      seed_(seed),
      rank_(rank),
      world_size_(world_size) {
  TORCH_CHECK_VALUE(!compressors_.empty(), "BucketCodec: needs at least one compressor");
  for (const auto& c : compressors_) {
    TORCH_CHECK_VALUE(c != nullptr, "BucketCodec: a compressor is null");
  }
  TORCH_CHECK_VALUE(world_size >= 1 && rank >= 0 && rank < world_size, "BucketCodec: rank=", rank,
                    " world_size=", world_size, "; valid: 0 <= rank < world_size");

  // Channel 0 is the fp32 allreduce (dense tensors and fp32-summable payloads); every other
  // way of travelling gets one channel, shared by the methods that travel that way.
  channels_.push_back({Collective::kAllReduce, at::kFloat, 0});
  const auto channel_for = [&](const Compressor& c) -> int64_t {
    if (c.collective() == Collective::kAllReduce && c.payload_dtype() == at::kFloat) return 0;
    for (size_t i = 1; i < channels_.size(); ++i) {
      const auto& ch = channels_[i];
      if (ch.collective == c.collective() && ch.dtype == c.payload_dtype() &&
          ch.variable == c.variable_size()) {
        return static_cast<int64_t>(i);
      }
    }
    Channel payload{c.collective(), c.payload_dtype(), 0};
    payload.variable = c.variable_size();
    payload.prescaled = c.collective() == Collective::kAllReduce;
    channels_.push_back(payload);
    return static_cast<int64_t>(channels_.size()) - 1;
  };

  int64_t expected_offset = 0;
  for (auto& entry : entries) {
    check_entry(entry, expected_offset);
    numel_ += entry.numel;

    Placement p{entry, nullptr, 0, 0, entry.numel, -1, parameter_key(entry.name)};
    if (entry.compress) {
      TORCH_CHECK_VALUE(
          entry.method >= 0 && entry.method < static_cast<int64_t>(compressors_.size()),
          "bucket codec: parameter '", entry.name, "' names method ", entry.method,
          "; valid: 0 to ", compressors_.size() - 1);
      p.method = compressors_[entry.method].get();
      p.channel = channel_for(*p.method);
      p.channel_numel = p.method->payload_numel(entry.numel);
      if (error_feedback_ && !p.method->lossless()) {
        p.residual_slot = error_feedback_->slot(entry.name, entry.numel);
      }
    }
    placements_.push_back(std::move(p));
  }
  // Drop empty channels, then put the flag slot at the start of the first one left.
  std::vector<int64_t> renumber(channels_.size(), -1);
  {
    std::vector<bool> used(channels_.size(), false);
    for (const auto& p : placements_) used[p.channel] = true;
    std::vector<Channel> kept;
    for (size_t i = 0; i < channels_.size(); ++i) {
      if (!used[i]) continue;
      renumber[i] = static_cast<int64_t>(kept.size());
      kept.push_back(channels_[i]);
    }
    channels_ = std::move(kept);
  }
  TORCH_CHECK_VALUE(!channels_.empty(), "BucketCodec: a bucket needs at least one parameter");
  flag_numel_ = channels_[0].dtype == at::kByte ? kByteAlignment : 1;
  channels_[0].numel = flag_numel_;
  // Payloads in order; byte payloads start 8-byte aligned.
  for (auto& p : placements_) {
    p.channel = renumber[p.channel];
    Channel& channel = channels_[p.channel];
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      has_padding_ = has_padding_ || aligned != channel.numel;
      channel.numel = aligned;
    }
    p.channel_offset = channel.numel;
    channel.numel += p.channel_numel;
  }
  for (auto& channel : channels_) {
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      has_padding_ = has_padding_ || aligned != channel.numel;
      channel.numel = aligned;
    }
  }
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

std::vector<at::Tensor> BucketCodec::encode(const at::Tensor& bucket, int64_t step,
                                            bool measure) const {
  check_bucket(bucket);
  // Corrupt indices met by earlier steps' decodes on this device surface here, once the device
  // has finished them (see CudaKernels::sparse_accumulate).
  if (bucket.is_cuda())
    cuda_kernels(compressors_[0]->name()).raise_deferred_index_errors(bucket.device());
  const bool finite = all_finite(bucket.narrow(0, 0, bucket_extent_));
  measured_ = {};
  std::vector<at::Tensor> messages;
  messages.reserve(channels_.size());
  for (const auto& channel : channels_) {
    const auto options = at::TensorOptions().dtype(channel.dtype).device(bucket.device());
    // Zero padding so that what crosses the wire is fully determined.
    const bool zeroed = !finite || (has_padding_ && channel.dtype == at::kByte);
    messages.push_back(zeroed ? at::zeros({channel.numel}, options)
                              : at::empty({channel.numel}, options));
  }
  messages[0].narrow(0, 0, flag_numel_).zero_();
  // Variable channels are packed as they fill: each payload starts 8-byte aligned after the
  // previous one's used length instead of at its placement's fixed offset.
  std::vector<int64_t> cursor(channels_.size(), 0);
  cursor[0] = flag_numel_;
  if (!finite) {
    // Nothing of this bucket is compressed and no residual changes: every rank discards the
    // step once it sees the flag.
    messages[0].narrow(0, 0, 1).fill_(1);
  }
  for (const auto& p : placements_) {
    if (!finite) break;
    const auto source = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const bool variable = channels_[p.channel].variable;
    const int64_t offset =
        variable ? align_up(cursor[p.channel], kByteAlignment) : p.channel_offset;
    const auto target = messages[p.channel].narrow(0, offset, p.channel_numel);
    if (p.method == nullptr) {
      target.copy_(source);
      if (measure) measured_.input_sq += squared_sum(source);
      continue;
    }
    const auto grad = source.scalar_type() == at::kFloat ? source : source.to(at::kFloat);
    const CompressContext ctx = context(p, step);
    int64_t used;
    if (p.residual_slot >= 0) {
      const auto residual = error_feedback_->residual(p.residual_slot, bucket.device());
      if (measure) measured_.input_sq += squared_sum(at::add(residual, grad));
      used = p.method->compress_with_feedback(grad, residual, target, ctx);
      if (measure) measured_.error_sq += squared_sum(residual);
    } else {
      used = p.method->compress(grad, target, ctx);
      if (measure) {
        // What the receivers will decode from this payload, undone from the prescale.
        auto decoded = at::zeros({p.entry.numel}, grad.options());
        p.method->decompress_add(target.narrow(0, 0, used), decoded, ctx);
        if (ctx.prescale != 1.0) decoded.div_(ctx.prescale);
        measured_.input_sq += squared_sum(grad);
        measured_.error_sq += squared_sum(at::sub(grad, decoded));
      }
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

DecodeOutcome BucketCodec::decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
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
      const int64_t header = i == 0 ? flag_numel_ : 0;
      for (int64_t r = 0; r < world; ++r) {
        TORCH_CHECK_VALUE(used[r] >= header && used[r] <= stride[i] && used[r] <= channel.numel,
                          "decode: rank ", r, " used ", used[r], " elements; valid: ", header,
                          " to ", std::min(stride[i], channel.numel));
      }
      continue;
    }
    const int64_t expected =
        channel.collective == Collective::kAllGather ? world * channel.numel : channel.numel;
    TORCH_CHECK_VALUE(received[i].numel() == expected, "decode: channel ", i, " (",
                      collective_name(channel.collective), ") must have ", expected,
                      " elements, got ", received[i].numel());
    stride[i] = channel.numel;
  }
  // Every rank's flag: the sum (allreduce) or one slot per rank (allgather).
  const auto flags = channels_[0].collective == Collective::kAllReduce
                         ? received[0].narrow(0, 0, 1)
                         : received[0].as_strided({world}, {stride[0]});
  const auto any_nonfinite = flags.ne(0).any();
  // The host reads the flags on the CPU, and on CUDA when a variable channel makes decoding
  // wait for the device anyway (a rank that flagged sent no payloads to walk through).
  // Otherwise the device applies them, so that the hook never waits for the collective.
  const bool on_host =
      !bucket.is_cuda() ||
      std::any_of(channels_.begin(), channels_.end(), [](const Channel& c) { return c.variable; });
  const auto nan_fill = [&] {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (const auto& p : placements_) {
      auto target = bucket.narrow(0, p.entry.offset, p.entry.numel);
      if (on_host) {
        target.fill_(nan);
      } else {
        target.masked_fill_(any_nonfinite, nan);
      }
    }
  };
  if (on_host && any_nonfinite.item<bool>()) {
    nan_fill();
    return DecodeOutcome::kNonFinite;
  }
  // Summed channels are averaged once, before unpacking (decompression is linear).
  for (size_t i = 0; i < channels_.size(); ++i) {
    const auto& channel = channels_[i];
    if (channel.collective == Collective::kAllReduce && !channel.prescaled) {
      received[i].div_(world);
    }
  }
  // Per channel and rank: where the next payload of a variable channel starts.
  std::vector<std::vector<int64_t>> cursor(channels_.size(), std::vector<int64_t>(world, 0));
  for (auto& rank_cursor : cursor[0]) rank_cursor = flag_numel_;
  for (const auto& p : placements_) {
    const auto target = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const auto& message = received[p.channel];
    const auto& channel = channels_[p.channel];
    if (p.method == nullptr) {
      target.copy_(message.narrow(0, p.channel_offset, p.channel_numel));
      continue;
    }
    const bool in_place = target.scalar_type() == at::kFloat;
    const auto out =
        in_place ? target : at::empty({p.entry.numel}, target.options().dtype(at::kFloat));
    out.zero_();
    const CompressContext ctx = context(p, step);
    if (channel.collective == Collective::kAllReduce) {
      p.method->decompress_add(message.narrow(0, p.channel_offset, p.channel_numel), out, ctx);
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
          at += p.method->decompress_add(message.narrow(0, base + at, used[r] - at), out, sender);
        } else {
          p.method->decompress_add(message.narrow(0, base + p.channel_offset, p.channel_numel), out,
                                   sender);
        }
      }
      out.div_(world);
    }
    if (!in_place) target.copy_(out);
  }
  if (!on_host) {
    nan_fill();  // on the device, without waiting for it
    return DecodeOutcome::kUnchecked;
  }
  return DecodeOutcome::kFinite;
}

}  // namespace gradcomp
