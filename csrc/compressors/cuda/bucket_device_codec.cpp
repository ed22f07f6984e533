// BucketCodec's device path on CUDA (DeviceBucketCodec, compressors/cuda_kernels.h): the
// layout turned into segment tables once, kept in one device buffer, and a fixed sequence of
// segmented kernels (kernels/cuda/bucket.h) per encode and decode.
//
// Encode: clear the step's flag word; check the bucket (the last block writes the message's flag
// slot); pack the dense entries; prepare the compressors' inputs (residual * ratio + gradient,
// or a float32 copy of a 16-bit gradient); then one launch per cast dtype and per quantizer, one
// for Random-K, one Top-K select over every Top-K-family entry and its packing.
// Decode: the dense entries; each cast and quantizer group straight into the bucket; the sparse
// methods through float32 accumulators (zeroed, Random-K added, each rank's Top-K payloads added
// in rank order, then scaled into the bucket). Every decode kernel reads the ranks' flags itself.
//
// Tables hold device addresses (residuals, the bucket, workspaces), so they are rebuilt when
// any of those changes: new residual storage (bind_residuals) or another bucket tensor.
// Generic c10 device APIs only, like cuda_backend.cpp, so this compiles against a CPU torch.
#include "compressors/cuda/bucket_device_codec.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "compressors/cuda/stream.h"
#include "kernels/common/philox.h"
#include "kernels/cuda/bucket.h"

namespace gradcomp {
namespace {

namespace cuda = kernels::cuda;
using kernels::Tile;
using Kind = DeviceEncoding::Kind;

cuda::ElementType element_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return cuda::ElementType::kFloat32;
    case at::kBFloat16:
      return cuda::ElementType::kBFloat16;
    case at::kHalf:
      return cuda::ElementType::kFloat16;
    case at::kByte:
      return cuda::ElementType::kByte;
    default:
      break;
  }
  TORCH_CHECK_TYPE(false, "gradcomp: bucket codec on CUDA: dtype ", dtype,
                   " is not supported; valid: float32, bfloat16, float16 gradients");
}

size_t align_bytes(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Host copies of the tables, laid out back to back (16-byte aligned) for one upload.
class TableArena {
 public:
  template <typename T>
  size_t add(const std::vector<T>& items) {
    const size_t offset = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(offset + items.size() * sizeof(T));
    if (!items.empty()) std::memcpy(bytes_.data() + offset, items.data(), items.size() * sizeof(T));
    return offset;
  }
  const std::vector<unsigned char>& bytes() const { return bytes_; }

 private:
  std::vector<unsigned char> bytes_;
};

// A table's place in the arena and its length.
struct TableRef {
  size_t offset = 0;
  int64_t count = 0;
};

template <typename T>
struct Group {
  std::vector<T> segments;
  std::vector<int64_t> sizes;  // what its tiles cover, per segment
  TableRef table, tiles;
};

struct CastGroup : Group<cuda::CastSegment> {
  bool half = false;
  int64_t channel = 0;
};

struct QuantizeGroup : Group<cuda::QuantizeSegment> {
  cuda::QuantizeParams params{};
  int64_t channel = 0;
  int64_t total_chunks = 0;
};

bool same_params(const cuda::QuantizeParams& a, const cuda::QuantizeParams& b) {
  return a.method == b.method && a.bits == b.bits && a.chunk == b.chunk;
}

class CudaBucketCodec final : public DeviceBucketCodec {
 public:
  CudaBucketCodec(const BucketLayout& layout, uint64_t seed, int64_t rank, int64_t world_size,
                  const at::Device& device, at::Tensor first_bad)
      : layout_(layout),
        seed_(seed),
        rank_(rank),
        world_size_(world_size),
        device_(device),
        first_bad_(std::move(first_bad)) {
    for (const auto& p : layout_.placements) {
      const Kind kind =
          p.method == nullptr ? Kind::kDense : p.method->device_encoding(p.entry.numel).kind;
      TORCH_CHECK_VALUE(kind != Kind::kNone, "bucket codec: parameter '", p.entry.name, "' uses ",
                        p.method->name(), ", which has no bucket-level CUDA path");
      const bool indexed = kind == Kind::kRandomK || kind == Kind::kTopK || kind == Kind::kTopKInt8;
      TORCH_CHECK_VALUE(!indexed || p.entry.numel <= INT32_MAX, "bucket codec: parameter '",
                        p.entry.name, "' has ", p.entry.numel, " elements; ", p.method->name(),
                        " takes at most 2^31-1 (indices are int32)");
      // Dense values and Random-K's summed values travel in the fp32 allreduce, which the
      // layout always puts first (channel 0, with the flag slot).
      TORCH_CHECK((kind != Kind::kDense && kind != Kind::kRandomK) || p.channel == 0,
                  "bucket codec: parameter '", p.entry.name, "' is summed in fp32 but placed in ",
                  "channel ", p.channel, " instead of channel 0");
    }
  }

  void bind_residuals(const std::vector<at::Tensor>& residuals) override {
    TORCH_CHECK_VALUE(residuals.size() == layout_.placements.size(), "bind_residuals: got ",
                      residuals.size(), " residuals for ", layout_.placements.size(), " entries");
    residuals_ = residuals;
    bound_bucket_ = nullptr;  // the tables hold residual addresses: rebuild
  }

  void encode(const at::Tensor& bucket, const std::vector<at::Tensor>& messages,
              const at::Tensor& scale_ratio, int64_t step) override {
    const c10::DeviceGuard guard(device_);
    const cudaStream_t stream = current_stream(device_);
    prepare(bucket);
    const auto type = element_type(bucket.scalar_type());
    const void* grads = bucket.data_ptr();
    auto* state = static_cast<uint32_t*>(pointer(state_offset_));
    check_launch(cudaMemsetAsync(state, 0, 2 * sizeof(uint32_t), stream), "memset (flag)");
    const uint32_t* nonfinite = state;
    check_launch(cuda::check_finite(grads, type, layout_.extent, state, messages[0].data_ptr(),
                                    element_type(layout_.channels[0].dtype), stream),
                 "check_finite");
    if (!dense_.segments.empty()) {
      check_launch(cuda::pack_dense(grads, type, segments(dense_), tiles(dense_),
                                    static_cast<float*>(messages[0].data_ptr()), nonfinite, stream),
                   "pack_dense");
    }
    if (!inputs_.segments.empty()) {
      const float* ratio =
          scale_ratio.defined() ? static_cast<const float*>(scale_ratio.data_ptr()) : nullptr;
      check_launch(cuda::prepare_inputs(grads, type, segments(inputs_), tiles(inputs_), ratio,
                                        nonfinite, stream),
                   "prepare_inputs");
    }
    const auto scale = static_cast<float>(1.0 / static_cast<double>(world_size_));
    const auto feedback = static_cast<float>(-1.0 / (1.0 / static_cast<double>(world_size_)));
    for (const auto& group : casts_) {
      check_launch(
          cuda::cast_encode_segments(segments(group), tiles(group), group.half, scale, feedback,
                                     static_cast<uint16_t*>(messages[group.channel].data_ptr()),
                                     nonfinite, stream),
          "cast_encode_segments");
    }
    for (const auto& group : quantizers_) {
      check_launch(
          cuda::quantize_encode_segments(group.params, segments(group), group.total_chunks,
                                         static_cast<uint8_t*>(messages[group.channel].data_ptr()),
                                         static_cast<uint64_t>(step), nonfinite, stream),
          "quantize_encode_segments");
    }
    if (!randomk_.segments.empty()) {
      check_launch(cuda::randomk_encode_segments(segments(randomk_), tiles(randomk_),
                                                 static_cast<float*>(messages[0].data_ptr()),
                                                 static_cast<uint64_t>(step), nonfinite, stream),
                   "randomk_encode_segments");
    }
    if (!topk_.segments.empty()) encode_topk(messages, nonfinite, stream);
  }

  void decode(const at::Tensor& bucket, const std::vector<at::Tensor>& received,
              int64_t step) override {
    const c10::DeviceGuard guard(device_);
    const cudaStream_t stream = current_stream(device_);
    prepare(bucket);
    for (size_t i = 0; i < received.size(); ++i) {
      // Kernels read floats and int32s in place from byte channels.
      TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(received[i].data_ptr()) % 8 == 0,
                        "decode: received channel ", i,
                        " starts at a misaligned address; valid: 8-byte aligned (a tensor of its "
                        "own, not a view at an offset)");
    }
    // Decode runs on the future callback's stream: tell the caching allocator that the tables
    // and the workspace (allocated on the encode stream) are used here too.
    const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    const c10::Stream decode_stream = impl.getStream(device_);
    impl.recordDataPtrOnStream(tables_.storage().data_ptr(), decode_stream);
    impl.recordDataPtrOnStream(workspace_.storage().data_ptr(), decode_stream);
    const auto type = element_type(bucket.scalar_type());
    void* out = bucket.data_ptr();
    const Channel& first = layout_.channels[0];
    const bool gathered = first.collective == Collective::kAllGather;
    const cuda::FlagSlots flags{received[0].data_ptr(), gathered ? first.numel : 0,
                                gathered ? static_cast<int32_t>(world_size_) : 1,
                                element_type(first.dtype)};
    const float inverse = 1.0f / static_cast<float>(world_size_);
    if (!dense_.segments.empty()) {
      check_launch(
          cuda::unpack_dense(static_cast<const float*>(received[0].data_ptr()), segments(dense_),
                             tiles(dense_), inverse, flags, out, type, stream),
          "unpack_dense");
    }
    for (const auto& group : casts_) {
      check_launch(cuda::cast_decode_segments(
                       static_cast<const uint16_t*>(received[group.channel].data_ptr()),
                       segments(group), tiles(group), group.half, flags, out, type, stream),
                   "cast_decode_segments");
    }
    for (const auto& group : quantizers_) {
      check_launch(cuda::quantize_decode_segments(
                       group.params, segments(group), tiles(group),
                       static_cast<const uint8_t*>(received[group.channel].data_ptr()),
                       layout_.channels[group.channel].numel, static_cast<int32_t>(world_size_),
                       inverse, flags, out, type, stream),
                   "quantize_decode_segments");
    }
    if (accumulators_.segments.empty()) return;
    check_launch(cuda::zero_accumulators(segments(accumulators_), tiles(accumulators_), stream),
                 "zero_accumulators");
    if (!randomk_.segments.empty()) {
      check_launch(cuda::randomk_decode_segments(static_cast<const float*>(received[0].data_ptr()),
                                                 segments(randomk_), tiles(randomk_), inverse,
                                                 static_cast<uint64_t>(step), flags, stream),
                   "randomk_decode_segments");
    }
    if (!sparse_.segments.empty()) {
      const auto* base = static_cast<const uint8_t*>(received[topk_channel_].data_ptr());
      const int64_t stride = layout_.channels[topk_channel_].numel;
      auto* first_bad = static_cast<unsigned long long*>(first_bad_.data_ptr());
      // One launch per rank, in rank order: every rank adds the same numbers in the same order.
      for (int64_t r = 0; r < world_size_; ++r) {
        check_launch(cuda::sparse_decode_segments(base + r * stride, segments(sparse_),
                                                  tiles(sparse_), flags, first_bad, stream),
                     "sparse_decode_segments");
      }
    }
    check_launch(cuda::finish_accumulators(segments(accumulators_), tiles(accumulators_), flags,
                                           out, type, stream),
                 "finish_accumulators");
  }

 private:
  void* pointer(size_t workspace_offset) const {
    return static_cast<unsigned char*>(workspace_.data_ptr()) + workspace_offset;
  }

  template <typename T>
  cuda::Segments<T> segments(const Group<T>& group) const {
    const auto* base = static_cast<const unsigned char*>(tables_.data_ptr());
    return {reinterpret_cast<const T*>(base + group.table.offset), T{},
            static_cast<int32_t>(group.table.count)};
  }

  template <typename T>
  cuda::Tiles tiles(const Group<T>& group) const {
    const auto* base = static_cast<const unsigned char*>(tables_.data_ptr());
    return {reinterpret_cast<const Tile*>(base + group.tiles.offset), group.tiles.count, 0, 0};
  }

  void encode_topk(const std::vector<at::Tensor>& messages, const uint32_t* nonfinite,
                   cudaStream_t stream) {
    const auto* base = static_cast<const unsigned char*>(tables_.data_ptr());
    // Candidate lists from torch's caching allocator: the memory is shared by the buckets
    // instead of held by each (8 bytes per element of the bucket's Top-K entries).
    const auto candidates =
        at::empty({2 * topk_total_n_}, at::TensorOptions().dtype(at::kInt).device(device_));
    auto* values = static_cast<float*>(pointer(sorted_values_offset_));
    auto* indices = static_cast<int32_t*>(pointer(sorted_indices_offset_));
    const cuda::Tiles word_tiles{reinterpret_cast<const Tile*>(base + topk_word_tiles_.offset),
                                 topk_word_tiles_.count, 0, 0};
    check_launch(cuda::topk_select_segments(
                     segments(topk_), tiles(topk_), word_tiles,
                     reinterpret_cast<const kernels::SliceBlock*>(base + topk_blocks_.offset),
                     topk_blocks_.count, 0, topk_total_n_, topk_total_k_, topk_total_words_, values,
                     indices, static_cast<int32_t*>(candidates.data_ptr()), pointer(select_offset_),
                     select_bytes_, stream),
                 "topk_select_segments");
    check_launch(cuda::topk_pack_segments(segments(pack_), tiles(pack_), values, indices,
                                          static_cast<float*>(pointer(scales_offset_)), any_int8_,
                                          static_cast<uint8_t*>(messages[topk_channel_].data_ptr()),
                                          nonfinite, stream),
                 "topk_pack_segments");
  }

  // Tables and workspaces for this bucket tensor and the bound residuals.
  void prepare(const at::Tensor& bucket) {
    TORCH_CHECK_VALUE(bucket.device() == device_, "bucket codec: bucket on ", bucket.device(),
                      " but this codec's device state is on ", device_);
    if (bucket.data_ptr() == bound_bucket_ && bucket.scalar_type() == bound_dtype_) return;
    build(bucket);
    bound_bucket_ = bucket.data_ptr();
    bound_dtype_ = bucket.scalar_type();
  }

  void build(const at::Tensor& bucket) {
    dense_ = {};
    inputs_ = {};
    randomk_ = {};
    topk_ = {};
    pack_ = {};
    sparse_ = {};
    accumulators_ = {};
    casts_.clear();
    quantizers_.clear();
    const bool float_bucket = bucket.scalar_type() == at::kFloat;
    auto* grads = static_cast<float*>(float_bucket ? bucket.data_ptr() : nullptr);
    const double inverse_world = 1.0 / static_cast<double>(world_size_);

    // Workspace sizes first (their addresses go into the tables).
    int64_t staging = 0, accumulated = 0;
    std::vector<int64_t> topk_n, topk_k;
    for (size_t i = 0; i < layout_.placements.size(); ++i) {
      const Placement& p = layout_.placements[i];
      if (p.method == nullptr) continue;
      const DeviceEncoding e = p.method->device_encoding(p.entry.numel);
      if (e.kind == Kind::kDense) continue;
      if (!has_residual(i) && !float_bucket) staging += p.entry.numel;
      const bool sparse =
          e.kind == Kind::kRandomK || e.kind == Kind::kTopK || e.kind == Kind::kTopKInt8;
      if (sparse && !float_bucket) accumulated += p.entry.numel;
      if (e.kind == Kind::kTopK || e.kind == Kind::kTopKInt8) {
        topk_n.push_back(p.entry.numel);
        topk_k.push_back(e.k);
      }
    }
    topk_total_n_ = 0;
    topk_total_k_ = 0;
    for (size_t s = 0; s < topk_n.size(); ++s) {
      topk_total_n_ += topk_n[s];
      topk_total_k_ += topk_k[s];
    }
    size_t bytes = 0;
    const auto reserve = [&bytes](size_t size) {
      const size_t at = bytes;
      bytes += align_bytes(size);
      return at;
    };
    state_offset_ = reserve(2 * sizeof(uint32_t));
    const size_t staging_offset = reserve(static_cast<size_t>(staging) * sizeof(float));
    const size_t accumulator_offset = reserve(static_cast<size_t>(accumulated) * sizeof(float));
    // Top-K's winner bitmaps: ceil(n / 32) words per segment, tiled for the ordering passes.
    std::vector<int64_t> topk_words;
    for (const int64_t n : topk_n) topk_words.push_back((n + 31) / 32);
    const auto word_tiles = kernels::make_tiles(topk_words, cuda::kTopKWordTile);
    topk_total_words_ = 0;
    for (const int64_t words : topk_words) topk_total_words_ += words;
    select_bytes_ = 0;
    if (!topk_n.empty()) {
      check_launch(cuda::topk_workspace_bytes(
                       static_cast<int32_t>(topk_n.size()), topk_total_k_, topk_total_words_,
                       static_cast<int64_t>(word_tiles.size()), &select_bytes_),
                   "topk_workspace_bytes");
    }
    select_offset_ = reserve(select_bytes_);
    sorted_values_offset_ = reserve(static_cast<size_t>(topk_total_k_) * sizeof(float));
    sorted_indices_offset_ = reserve(static_cast<size_t>(topk_total_k_) * sizeof(int32_t));
    scales_offset_ = reserve(topk_n.size() * sizeof(float));
    // The previous workspace stays alive one build longer, like the tables.
    previous_workspace_ = workspace_;
    workspace_ = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                           at::TensorOptions().dtype(at::kByte).device(device_));
    auto* staging_base = static_cast<float*>(pointer(staging_offset));
    auto* accumulator_base = static_cast<float*>(pointer(accumulator_offset));

    // The segments, placement by placement.
    int64_t staged = 0, accumulator_at = 0, winners = 0, topk_at = 0, words_at = 0;
    any_int8_ = false;
    topk_channel_ = 0;
    for (size_t i = 0; i < layout_.placements.size(); ++i) {
      const Placement& p = layout_.placements[i];
      const int64_t n = p.entry.numel, offset = p.entry.offset;
      if (p.method == nullptr) {
        add(dense_, cuda::CopySegment{offset, p.channel_offset, 0}, n);
        continue;
      }
      const DeviceEncoding e = p.method->device_encoding(n);
      if (e.kind == Kind::kDense) {
        add(dense_, cuda::CopySegment{offset, p.channel_offset, 1}, n);
        continue;
      }
      // The compressor's input: the residual (error feedback), the float32 bucket itself, or
      // a float32 copy of a 16-bit gradient.
      float* residual = has_residual(i) ? static_cast<float*>(residuals_[i].data_ptr()) : nullptr;
      float* x = residual;
      if (residual != nullptr) {
        add(inputs_, cuda::InputSegment{residual, offset, 1}, n);
      } else if (float_bucket) {
        x = grads + offset;
      } else {
        x = staging_base + staged;
        staged += n;
        add(inputs_, cuda::InputSegment{x, offset, 0}, n);
      }
      float* out = nullptr;  // the sparse methods' float32 accumulator
      const bool sparse =
          e.kind == Kind::kRandomK || e.kind == Kind::kTopK || e.kind == Kind::kTopKInt8;
      if (sparse) {
        out = float_bucket ? grads + offset : accumulator_base + accumulator_at;
        if (!float_bucket) accumulator_at += n;
        const float scale = e.kind == Kind::kRandomK ? 1.0f : static_cast<float>(inverse_world);
        add(accumulators_, cuda::AccumulatorSegment{out, offset, scale}, n);
      }
      switch (e.kind) {
        case Kind::kCast:
          cast_group(e.half, p.channel).segments.push_back({x, residual, p.channel_offset, offset});
          cast_group(e.half, p.channel).sizes.push_back(n);
          break;
        case Kind::kQsgd:
        case Kind::kSign:
        case Kind::kInt8: {
          cuda::QuantizeParams params{e.kind == Kind::kQsgd   ? cuda::QuantizeMethod::kQsgd
                                      : e.kind == Kind::kSign ? cuda::QuantizeMethod::kSign
                                                              : cuda::QuantizeMethod::kInt8,
                                      e.bits, e.chunk};
          QuantizeGroup& group = quantize_group(params, p.channel);
          // The key QuantizeCompressor draws its rounding from: per rank, per parameter.
          const uint64_t key =
              kernels::philox_key(seed_ ^ (static_cast<uint64_t>(rank_) << 40), p.tensor_key);
          group.segments.push_back(
              {x, residual, n, p.channel_offset, group.total_chunks, key, offset});
          group.sizes.push_back(n);
          group.total_chunks += (n + e.chunk - 1) / e.chunk;
          break;
        }
        case Kind::kRandomK:
          add(randomk_,
              cuda::RandomKSegment{x, residual, out, n, e.k,
                                   kernels::philox_key(seed_, p.tensor_key), p.channel_offset,
                                   e.unbiased ? 1 : 0},
              e.k);
          break;
        case Kind::kTopK:
        case Kind::kTopKInt8: {
          const int32_t int8 = e.kind == Kind::kTopKInt8 ? 1 : 0;
          any_int8_ = any_int8_ || int8 != 0;
          topk_channel_ = p.channel;
          add(topk_, cuda::TopKSegment{x, n, e.k, winners, topk_at, words_at}, n);
          add(pack_, cuda::TopKPackSegment{residual, p.channel_offset, e.k, winners, int8}, e.k);
          add(sparse_, cuda::SparseSegment{out, n, e.k, p.channel_offset, int8}, e.k);
          winners += e.k;
          topk_at += n;
          words_at += (n + 31) / 32;
          break;
        }
        case Kind::kDense:
        case Kind::kNone:
          break;
      }
    }

    // Tiles, then one upload of every table.
    TableArena arena;
    const auto finish = [&arena](auto& group, int64_t tile) {
      group.table = {arena.add(group.segments), static_cast<int64_t>(group.segments.size())};
      const auto list = kernels::make_tiles(group.sizes, tile);
      group.tiles = {arena.add(list), static_cast<int64_t>(list.size())};
    };
    finish(dense_, cuda::kElementTile);
    finish(inputs_, cuda::kElementTile);
    finish(randomk_, cuda::kElementTile);
    finish(topk_, cuda::kTopKTile);
    finish(pack_, cuda::kElementTile);
    finish(sparse_, cuda::kElementTile);
    finish(accumulators_, cuda::kElementTile);
    for (auto& group : casts_) finish(group, cuda::kElementTile);
    for (auto& group : quantizers_) finish(group, cuda::kElementTile);
    const auto blocks = kernels::make_slice_blocks(topk_n, cuda::kTopKSlice, 1024);
    topk_blocks_ = {arena.add(blocks), static_cast<int64_t>(blocks.size())};
    topk_word_tiles_ = {arena.add(word_tiles), static_cast<int64_t>(word_tiles.size())};
    upload(arena);
  }

  template <typename T>
  static void add(Group<T>& group, const T& segment, int64_t size) {
    group.segments.push_back(segment);
    group.sizes.push_back(size);
  }

  CastGroup& cast_group(bool half, int64_t channel) {
    for (auto& group : casts_) {
      if (group.half == half) return group;
    }
    casts_.emplace_back();
    casts_.back().half = half;
    casts_.back().channel = channel;
    return casts_.back();
  }

  QuantizeGroup& quantize_group(const cuda::QuantizeParams& params, int64_t channel) {
    for (auto& group : quantizers_) {
      if (same_params(group.params, params)) return group;
    }
    quantizers_.emplace_back();
    quantizers_.back().params = params;
    quantizers_.back().channel = channel;
    return quantizers_.back();
  }

  bool has_residual(size_t placement) const {
    return placement < residuals_.size() && residuals_[placement].defined() &&
           layout_.placements[placement].residual_slot >= 0;
  }

  void upload(const TableArena& arena) {
    const auto& bytes = arena.bytes();
    const auto size = static_cast<int64_t>(std::max<size_t>(bytes.size(), 1));
    // Pinned, so the copy is asynchronous; the caching host allocator keeps the block until the
    // copy has run, and so does host_tables_ (until the next build).
    host_tables_ = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    if (!bytes.empty()) std::memcpy(host_tables_.data_ptr(), bytes.data(), bytes.size());
    // The previous tables stay alive one build longer: a decode on another stream may still
    // read them when a build happens between steps.
    previous_tables_ = tables_;
    tables_ = host_tables_.to(at::TensorOptions().dtype(at::kByte).device(device_),
                              /*non_blocking=*/true);
  }

  BucketLayout layout_;
  uint64_t seed_;
  int64_t rank_;
  int64_t world_size_;
  at::Device device_;
  at::Tensor first_bad_;  // the backend's deferred record of corrupt indices on this device
  std::vector<at::Tensor> residuals_;

  const void* bound_bucket_ = nullptr;
  at::ScalarType bound_dtype_ = at::kFloat;
  at::Tensor tables_, previous_tables_, host_tables_, workspace_, previous_workspace_;
  size_t state_offset_ = 0, select_offset_ = 0, select_bytes_ = 0;
  size_t sorted_values_offset_ = 0, sorted_indices_offset_ = 0, scales_offset_ = 0;

  Group<cuda::CopySegment> dense_;
  Group<cuda::InputSegment> inputs_;
  Group<cuda::RandomKSegment> randomk_;
  Group<cuda::TopKSegment> topk_;
  Group<cuda::TopKPackSegment> pack_;
  Group<cuda::SparseSegment> sparse_;
  Group<cuda::AccumulatorSegment> accumulators_;
  std::vector<CastGroup> casts_;
  std::vector<QuantizeGroup> quantizers_;
  TableRef topk_blocks_, topk_word_tiles_;
  int64_t topk_total_n_ = 0, topk_total_k_ = 0, topk_total_words_ = 0, topk_channel_ = 0;
  bool any_int8_ = false;
};

}  // namespace

std::unique_ptr<DeviceBucketCodec> make_cuda_bucket_codec(const BucketLayout& layout, uint64_t seed,
                                                          int64_t rank, int64_t world_size,
                                                          const at::Device& device,
                                                          at::Tensor first_bad) {
  return std::make_unique<CudaBucketCodec>(layout, seed, rank, world_size, device,
                                           std::move(first_bad));
}

}  // namespace gradcomp
