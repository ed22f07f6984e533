#include "compressors/bucket_layout.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace gradcomp {
namespace {}  // namespace

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

BucketLayout make_bucket_layout(const std::vector<std::shared_ptr<const Compressor>>& methods,
                                const std::vector<BucketEntry>& entries,
                                ErrorFeedback* error_feedback) {
  TORCH_CHECK_VALUE(!methods.empty(), "BucketCodec: needs at least one compressor");
  for (const auto& c : methods) {
    TORCH_CHECK_VALUE(c != nullptr, "BucketCodec: a compressor is null");
  }
  BucketLayout layout;
  // Channel 0 is the fp32 allreduce (dense tensors and fp32-summable payloads); every other
  // way of travelling gets one channel, shared by the methods that travel that way.
  std::vector<Channel> channels{{Collective::kAllReduce, at::kFloat, 0}};
  const auto channel_for = [&](const Compressor& c) -> int64_t {
    if (c.collective() == Collective::kAllReduce && c.payload_dtype() == at::kFloat) return 0;
    for (size_t i = 1; i < channels.size(); ++i) {
      const auto& ch = channels[i];
      if (ch.collective == c.collective() && ch.dtype == c.payload_dtype() &&
          ch.variable == c.variable_size()) {
        return static_cast<int64_t>(i);
      }
    }
    Channel payload{c.collective(), c.payload_dtype(), 0};
    payload.variable = c.variable_size();
    payload.prescaled = c.collective() == Collective::kAllReduce;
    channels.push_back(payload);
    return static_cast<int64_t>(channels.size()) - 1;
  };

  int64_t expected_offset = 0;
  for (const auto& entry : entries) {
    check_entry(entry, expected_offset);
    layout.numel += entry.numel;

    Placement p{entry, nullptr, 0, 0, entry.numel, -1, parameter_key(entry.name)};
    if (entry.compress) {
      TORCH_CHECK_VALUE(entry.method >= 0 && entry.method < static_cast<int64_t>(methods.size()),
                        "bucket codec: parameter '", entry.name, "' names method ", entry.method,
                        "; valid: 0 to ", methods.size() - 1);
      p.method = methods[entry.method].get();
      p.channel = channel_for(*p.method);
      p.channel_numel = p.method->payload_numel(entry.numel);
      if (error_feedback != nullptr && !p.method->lossless()) {
        p.residual_slot = error_feedback->slot(entry.name, entry.numel);
      }
    }
    layout.placements.push_back(std::move(p));
  }
  // Drop empty channels, then put the flag slot at the start of the first one left.
  std::vector<int64_t> renumber(channels.size(), -1);
  {
    std::vector<bool> used(channels.size(), false);
    for (const auto& p : layout.placements) used[p.channel] = true;
    for (size_t i = 0; i < channels.size(); ++i) {
      if (!used[i]) continue;
      renumber[i] = static_cast<int64_t>(layout.channels.size());
      layout.channels.push_back(channels[i]);
    }
  }
  TORCH_CHECK_VALUE(!layout.channels.empty(), "BucketCodec: a bucket needs at least one parameter");
  layout.flag_numel = layout.channels[0].dtype == at::kByte ? kByteAlignment : 1;
  layout.channels[0].numel = layout.flag_numel;
  // Payloads in order; byte payloads start 8-byte aligned.
  for (auto& p : layout.placements) {
    p.channel = renumber[p.channel];
    Channel& channel = layout.channels[p.channel];
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      layout.has_padding = layout.has_padding || aligned != channel.numel;
      channel.numel = aligned;
    }
    p.channel_offset = channel.numel;
    channel.numel += p.channel_numel;
  }
  for (auto& channel : layout.channels) {
    if (channel.dtype == at::kByte) {
      const int64_t aligned = align_up(channel.numel, kByteAlignment);
      layout.has_padding = layout.has_padding || aligned != channel.numel;
      channel.numel = aligned;
    }
    layout.variable = layout.variable || channel.variable;
  }
  layout.all_dense =
      std::all_of(layout.placements.begin(), layout.placements.end(), [](const Placement& p) {
        return p.method == nullptr ||
               p.method->device_encoding(p.entry.numel).kind == DeviceEncoding::Kind::kDense;
      });
  // The bucket may hold padding between parameters; numel counts gradient elements only.
  layout.extent = expected_offset;
  return layout;
}

}  // namespace gradcomp
