#include "compressors/bucket_codec.h"

#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "compressors/cuda_kernels.h"

namespace gradcomp {
namespace {

// GRADCOMP_DEVICE_PATH=0 runs CUDA buckets entry by entry, as before the device path existed:
// for comparisons, and as a way around a device-path problem without a rebuild.
// The gradient types the device path's kernels read and write; others go entry by entry.
bool device_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

bool device_path_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("GRADCOMP_DEVICE_PATH");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

}  // namespace

double squared_sum(const at::Tensor& values) {
  return values.to(at::kDouble).square().sum().item<double>();
}

bool all_finite(const at::Tensor& values) {
  if (values.numel() == 0) return true;
  if (std::isfinite(values.sum(at::kFloat).item<float>())) return true;
  return at::isfinite(values).all().item<bool>();
}

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
  TORCH_CHECK_VALUE(world_size >= 1 && rank >= 0 && rank < world_size, "BucketCodec: rank=", rank,
                    " world_size=", world_size, "; valid: 0 <= rank < world_size");
  layout_ = make_bucket_layout(compressors_, entries, error_feedback_.get());
  device_capable_ = !layout_.variable;
  for (const auto& p : layout_.placements) {
    if (p.method != nullptr &&
        p.method->device_encoding(p.entry.numel).kind == DeviceEncoding::Kind::kNone) {
      device_capable_ = false;
    }
  }
}

BucketCodec::~BucketCodec() = default;

int64_t BucketCodec::bytes_sent() const {
  int64_t total = 0;
  for (const auto& channel : layout_.channels) total += channel.bytes();
  return total;
}

bool BucketCodec::uses_device_path(const at::Device& device) const {
  return device.is_cuda() && device_capable_ && has_cuda_kernels() && device_path_enabled();
}

void BucketCodec::check_bucket(const at::Tensor& bucket) const {
  check_bucket_tensor(bucket, layout_.extent);
}

CompressContext BucketCodec::context(const Placement& p, int64_t step) const {
  CompressContext ctx{seed_, step, p.tensor_key, rank_, 1.0};
  ctx.defer_checks = true;  // a decode in the hot path never waits for the device
  if (layout_.channels[p.channel].prescaled) {
    ctx.prescale = 1.0 / static_cast<double>(world_size_);
  }
  return ctx;
}

BucketCodec::DeviceState& BucketCodec::state_for(const at::Device& device) {
  if (state_ != nullptr && state_->device == device) return *state_;
  auto state = std::make_unique<DeviceState>();
  state->device = device;
  for (const auto& channel : layout_.channels) {
    const auto options = at::TensorOptions().dtype(channel.dtype).device(device);
    // Zeros once: padding and the flag slot's spare bytes are never written again, so what
    // crosses the wire is fully determined.
    state->messages.push_back(at::zeros({channel.numel}, options));
    const bool gathered = channel.collective == Collective::kAllGather && !channel.variable;
    state->gathered.push_back(gathered ? at::empty({world_size_ * channel.numel}, options)
                                       : at::Tensor());
  }
  if (uses_device_path(device)) {
    state->device_codec = cuda_kernels(compressors_[0]->name())
                              .make_bucket_codec(layout_, seed_, rank_, world_size_, device);
  }
  state_ = std::move(state);
  return *state_;
}

at::Tensor BucketCodec::gather_buffer(int64_t channel) const {
  TORCH_CHECK_VALUE(channel >= 0 && channel < static_cast<int64_t>(layout_.channels.size()),
                    "gather_buffer: channel ", channel, " does not exist; valid: 0 to ",
                    layout_.channels.size() - 1);
  TORCH_CHECK_VALUE(state_ != nullptr && state_->gathered[channel].defined(),
                    "gather_buffer: channel ", channel, " (",
                    collective_name(layout_.channels[channel].collective),
                    layout_.channels[channel].variable ? ", variable size" : "",
                    ") has no gather buffer: only fixed-size allgather channels do, after encode");
  return state_->gathered[channel];
}

std::vector<at::Tensor> BucketCodec::encode(const at::Tensor& bucket, int64_t step, bool measure,
                                            const std::optional<at::Tensor>& scale_ratio) {
  check_bucket(bucket);
  if (scale_ratio.has_value()) {
    const auto& ratio = *scale_ratio;
    TORCH_CHECK_VALUE(ratio.numel() == 1 && ratio.scalar_type() == at::kFloat &&
                          ratio.device() == bucket.device(),
                      "encode: scale_ratio must be a one-element float32 tensor on ",
                      bucket.device(), ", got ", ratio.scalar_type(), " of shape ", ratio.sizes(),
                      " on ", ratio.device());
  }
  // Corrupt indices met by earlier steps' decodes on this device surface here, once the device
  // has finished them (see CudaKernels::sparse_accumulate).
  if (bucket.is_cuda()) {
    cuda_kernels(compressors_[0]->name()).raise_deferred_index_errors(bucket.device());
  }
  DeviceState& state = state_for(bucket.device());
  measured_ = {};
  if (state.device_codec != nullptr && !measure && device_dtype(bucket.scalar_type())) {
    encode_on_device(bucket, step, scale_ratio, state);
    return state.messages;
  }
  std::vector<at::Tensor> messages = state.messages;
  encode_entries(bucket, step, measure, scale_ratio, messages);
  return messages;
}

void BucketCodec::encode_on_device(const at::Tensor& bucket, int64_t step,
                                   const std::optional<at::Tensor>& scale_ratio,
                                   DeviceState& state) {
  if (error_feedback_ != nullptr && state.residual_generation != error_feedback_->generation()) {
    std::vector<at::Tensor> residuals(layout_.placements.size());
    for (size_t i = 0; i < residuals.size(); ++i) {
      const auto slot = layout_.placements[i].residual_slot;
      if (slot >= 0) residuals[i] = error_feedback_->residual(slot, bucket.device());
    }
    // Read after residual(), which may itself replace storage on first use.
    state.residual_generation = error_feedback_->generation();
    state.device_codec->bind_residuals(residuals);
  }
  state.device_codec->encode(bucket, state.messages,
                             scale_ratio.has_value() ? *scale_ratio : at::Tensor(), step);
}

void BucketCodec::encode_entries(const at::Tensor& bucket, int64_t step, bool measure,
                                 const std::optional<at::Tensor>& scale_ratio,
                                 std::vector<at::Tensor>& messages) {
  const bool finite = all_finite(bucket.narrow(0, 0, layout_.extent));
  if (scale_ratio.has_value() && error_feedback_ != nullptr) {
    // The residuals follow the loss scale whether or not this step's bucket is finite.
    for (const auto& p : layout_.placements) {
      if (p.residual_slot >= 0) {
        error_feedback_->residual(p.residual_slot, bucket.device()).mul_(*scale_ratio);
      }
    }
  }
  if (!finite) {
    // Nothing of this bucket is compressed and no residual changes: every rank discards the
    // step once it sees the flag. Zero payloads are valid for every decoder.
    for (auto& message : messages) message.zero_();
    messages[0].narrow(0, 0, 1).fill_(1);
  } else {
    messages[0].narrow(0, 0, layout_.flag_numel).zero_();
  }
  // Variable channels are packed as they fill: each payload starts 8-byte aligned after the
  // previous one's used length instead of at its placement's fixed offset.
  std::vector<int64_t> cursor(layout_.channels.size(), 0);
  cursor[0] = layout_.flag_numel;
  for (const auto& p : layout_.placements) {
    if (!finite) break;
    const auto source = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const bool variable = layout_.channels[p.channel].variable;
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
  for (size_t i = 0; i < layout_.channels.size(); ++i) {
    if (!layout_.channels[i].variable) continue;
    // A rank that flagged stopped at its headers: the flag slot, or nothing.
    const int64_t end = cursor[i];
    const int64_t length = align_up(end, kByteAlignment);
    // The alignment gap after the last payload must be zero like any other padding.
    messages[i].narrow(0, end, length - end).zero_();
    messages[i] = messages[i].narrow(0, 0, length);
  }
}

std::vector<int64_t> BucketCodec::check_received(const std::vector<at::Tensor>& received,
                                                 const std::vector<int64_t>& used) const {
  const auto& channels = layout_.channels;
  TORCH_CHECK_VALUE(received.size() == channels.size(), "decode: got ", received.size(),
                    " tensors for ", channels.size(), " channels");
  const int64_t world = world_size_;
  std::vector<int64_t> stride(channels.size());
  for (size_t i = 0; i < channels.size(); ++i) {
    const auto& channel = channels[i];
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
      const int64_t header = i == 0 ? layout_.flag_numel : 0;
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
  return stride;
}

DecodeOutcome BucketCodec::decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
                                  int64_t step, const std::vector<int64_t>& used) {
  check_bucket(bucket);
  const auto stride = check_received(received, used);
  for (const auto& tensor : received) {
    TORCH_CHECK_VALUE(tensor.device() == bucket.device(), "decode: a received tensor is on ",
                      tensor.device(), " but the bucket is on ", bucket.device());
  }
  if (uses_device_path(bucket.device()) && device_dtype(bucket.scalar_type())) {
    DeviceState& state = state_for(bucket.device());
    state.device_codec->decode(bucket, received, step);
    return DecodeOutcome::kUnchecked;  // the flags were applied on the device
  }
  return decode_entries(bucket, received, step, used, stride);
}

DecodeOutcome BucketCodec::decode_entries(const at::Tensor& bucket,
                                          const std::vector<at::Tensor>& received, int64_t step,
                                          const std::vector<int64_t>& used,
                                          const std::vector<int64_t>& stride) const {
  const auto& channels = layout_.channels;
  const int64_t world = world_size_;
  // Every rank's flag: the sum (allreduce) or one slot per rank (allgather).
  const auto flags = channels[0].collective == Collective::kAllReduce
                         ? received[0].narrow(0, 0, 1)
                         : received[0].as_strided({world}, {stride[0]});
  const auto any_nonfinite = flags.ne(0).any();
  // The host reads the flags on the CPU, and on CUDA when a variable channel makes decoding
  // wait for the device anyway (a rank that flagged sent no payloads to walk through).
  // Otherwise the device applies them, so that the hook never waits for the collective.
  const bool on_host = !bucket.is_cuda() || layout_.variable;
  const auto nan_fill = [&] {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (const auto& p : layout_.placements) {
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
  for (size_t i = 0; i < channels.size(); ++i) {
    const auto& channel = channels[i];
    if (channel.collective == Collective::kAllReduce && !channel.prescaled) {
      received[i].div_(world);
    }
  }
  // Per channel and rank: where the next payload of a variable channel starts.
  std::vector<std::vector<int64_t>> cursor(channels.size(), std::vector<int64_t>(world, 0));
  for (auto& rank_cursor : cursor[0]) rank_cursor = layout_.flag_numel;
  for (const auto& p : layout_.placements) {
    const auto target = bucket.narrow(0, p.entry.offset, p.entry.numel);
    const auto& message = received[p.channel];
    const auto& channel = channels[p.channel];
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
