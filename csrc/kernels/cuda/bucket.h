// Segmented CUDA kernels: each launch covers every entry ("segment") of a bucket that one
// method handles, driven by tables in device memory (kernels/common/segments.h), so a bucket
// costs a fixed number of launches whatever the number of parameters it holds. The encodings
// are those of the per-tensor kernels (kernels.h, kernels/cpu/*.h): a bucket encoded here
// decodes anywhere, and the per-tensor kernels of Top-K and the quantizers run these same kernels
// on a single segment.
//
// No torch headers, no host synchronization: every function only enqueues work on `stream`
// and returns the launch status. Pointers are device memory unless a comment says otherwise.
//
// Non-finite handling: `nonfinite` points to the flag check_finite() set for this step (0:
// every element finite). Encode kernels that see it set write zero payloads and leave every
// residual exactly as it was (only the loss-scale ratio is applied). Decode kernels read every
// rank's flag from the received channel (FlagSlots) and write NaN over their outputs when any
// is set.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/segments.h"

namespace gradcomp::kernels::cuda {

// Elements per tile of the elementwise segmented kernels (32 per thread of a 256-thread block).
constexpr int32_t kElementTile = 8192;

// How gradients (and the bucket) are stored.
enum class ElementType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kByte = 3 };

// A device table of segments, or one segment passed by value (table == nullptr), so that the
// per-tensor entry points need no table in device memory.
template <typename T>
struct Segments {
  const T* table;
  T single;
  int32_t count;
  // By value, so that kernels keep a segment in registers. On the host only `single` can be
  // read (the table is device memory).
  GRADCOMP_HOST_DEVICE T operator[](int32_t i) const {
    return table != nullptr ? table[i] : single;
  }
};

// The tiles of a launch: a device table, or (table == nullptr) the implicit tiles of one
// segment of `single_numel` elements, `single_tile` elements each.
struct Tiles {
  const Tile* table;
  int64_t count;
  int64_t single_numel;
  int32_t single_tile;
  GRADCOMP_HOST_DEVICE Tile operator[](int64_t i) const {
    if (table != nullptr) return table[i];
    const int64_t begin = i * single_tile;
    const int64_t left = single_numel - begin;
    return Tile{begin, 0, static_cast<int32_t>(left < single_tile ? left : single_tile)};
  }
};

// Every rank's non-finite flag in a received channel 0: `count` values of `type`, `stride`
// elements apart (an allreduce: one value, the sum; an allgather: one per rank).
struct FlagSlots {
  const void* base;
  int64_t stride;
  int32_t count;
  ElementType type;
};

// -- the non-finite check -------------------------------------------------------------------
// state[0] |= 1 when any of bucket[0, n) is inf or NaN; state[1] counts finished blocks (both
// zero beforehand). The last block writes the flag into `slot` (one element of slot_type; a
// byte channel's first byte), so the message carries it without another launch.
cudaError_t check_finite(const void* bucket, ElementType type, int64_t n, uint32_t* state,
                         void* slot, ElementType slot_type, cudaStream_t stream);

// -- dense entries: the fp32 allreduce channel ------------------------------------------------
struct CopySegment {
  int64_t bucket;    // element offset in the bucket
  int64_t channel;   // element offset in the fp32 channel
  int32_t add_zero;  // decode writes 0 + v ("none": decompress_add into zeros), else v
};
// channel[c] = bucket[b] as float (0 when flagged).
cudaError_t pack_dense(const void* bucket, ElementType type, Segments<CopySegment> segments,
                       Tiles tiles, float* channel, const uint32_t* nonfinite, cudaStream_t stream);
// bucket[b] = channel[c] * inverse_world (the allreduce's sum averaged), NaN when flagged.
cudaError_t unpack_dense(const float* channel, Segments<CopySegment> segments, Tiles tiles,
                         float inverse_world, FlagSlots flags, void* bucket, ElementType type,
                         cudaStream_t stream);

// -- the compressors' inputs ------------------------------------------------------------------
struct InputSegment {
  float* target;       // the residual (accumulate) or a float32 staging copy
  int64_t bucket;      // element offset of the gradient in the bucket
  int32_t accumulate;  // 1: target = target * ratio + gradient (error feedback); 0: = gradient
};
// ratio: one float on the device, or null for 1. Flagged: residuals only get the ratio.
cudaError_t prepare_inputs(const void* bucket, ElementType type, Segments<InputSegment> segments,
                           Tiles tiles, const float* ratio, const uint32_t* nonfinite,
                           cudaStream_t stream);

// -- fp16 / bf16 casts (an allreduce of 16-bit values pre-divided by the world size) ----------
struct CastSegment {
  const float* x;   // encode input
  float* residual;  // error feedback (the same memory as x), or null
  int64_t channel;  // element offset in the 16-bit channel
  int64_t bucket;   // decode: element offset of the output in the bucket
};
// channel = cast(x * scale); with a residual, residual = x + feedback_alpha * decode(channel).
cudaError_t cast_encode_segments(Segments<CastSegment> segments, Tiles tiles, bool half,
                                 float scale, float feedback_alpha, uint16_t* channel,
                                 const uint32_t* nonfinite, cudaStream_t stream);
// bucket = 0 + decode(channel) (the channel holds the average already), NaN when flagged.
cudaError_t cast_decode_segments(const uint16_t* channel, Segments<CastSegment> segments,
                                 Tiles tiles, bool half, FlagSlots flags, void* bucket,
                                 ElementType type, cudaStream_t stream);

// -- chunked quantizers: QSGD, sign, int8 (allgathered) ---------------------------------------
enum class QuantizeMethod : int32_t { kQsgd = 0, kSign = 1, kInt8 = 2 };
struct QuantizeParams {
  QuantizeMethod method;
  int32_t bits;   // QSGD: 2, 4 or 8
  int64_t chunk;  // elements per chunk, a multiple of 8
};
struct QuantizeSegment {
  const float* x;       // encode input
  float* residual;      // error feedback (the same memory as x), or null
  int64_t n;            // elements
  int64_t payload;      // byte offset of the payload in the channel (per rank)
  int64_t first_chunk;  // chunks of the segments before this one
  uint64_t key;         // QSGD's Philox key
  int64_t bucket;       // decode: element offset of the output in the bucket
};
// One warp per chunk; total_chunks over all segments. With a residual, residual -= decode.
cudaError_t quantize_encode_segments(QuantizeParams params, Segments<QuantizeSegment> segments,
                                     int64_t total_chunks, uint8_t* channel, uint64_t step,
                                     const uint32_t* nonfinite, cudaStream_t stream);
// bucket = (sum over ranks r in order of decode(rank r's payload)) * inverse_world, NaN when
// flagged; rank r's payloads start at channel + r * rank_stride (bytes).
cudaError_t quantize_decode_segments(QuantizeParams params, Segments<QuantizeSegment> segments,
                                     Tiles tiles, const uint8_t* channel, int64_t rank_stride,
                                     int32_t world, float inverse_world, FlagSlots flags,
                                     void* bucket, ElementType type, cudaStream_t stream);

// -- Random-K (summed in the fp32 allreduce) --------------------------------------------------
struct RandomKSegment {
  const float* x;   // encode input
  float* residual;  // error feedback (the same memory as x), or null
  float* out;       // decode: the entry's float32 accumulator (zeroed first)
  int64_t n;
  int64_t k;
  uint64_t key;      // Philox key: the same on every rank
  int64_t channel;   // element offset of the k values in the fp32 channel
  int32_t unbiased;  // values scaled by their stratum's size
};
// Tiles over the k values of every segment.
cudaError_t randomk_encode_segments(Segments<RandomKSegment> segments, Tiles tiles, float* channel,
                                    uint64_t step, const uint32_t* nonfinite, cudaStream_t stream);
// out[index] += channel value * inverse_world; nothing when flagged.
cudaError_t randomk_decode_segments(const float* channel, Segments<RandomKSegment> segments,
                                    Tiles tiles, float inverse_world, uint64_t step,
                                    FlagSlots flags, cudaStream_t stream);

// -- Top-K family (allgathered (value, index) payloads) ----------------------------------------
struct TopKSegment {
  const float* x;  // the values to select from
  int64_t n;
  int64_t k;           // 1 <= k <= n <= 2^31 - 1
  int64_t winners;     // offset of this segment's k winners in the winner arrays
  int64_t candidates;  // offset of its candidate lists (the sum of n before it)
  int64_t bitmap;      // offset (in 32-bit words) of its winner bitmap: ceil(n / 32) words
};
// Bytes of the select's workspace for `count` segments with total_k winners, total_words bitmap
// words (the sum of ceil(n / 32)) and word_tiles tiles over them; the candidate lists
// (2 * total_n int32, total_n the sum of the segments' n) are passed separately.
cudaError_t topk_workspace_bytes(int32_t count, int64_t total_k, int64_t total_words,
                                 int64_t word_tiles, size_t* bytes);
// The k largest-magnitude elements of every segment, with the CPU's tie rule, into
// values[winners + j] and indices[winners + j] (int32 positions within the segment) in
// ascending index order per segment. tiles cover every element of every segment, word_tiles
// every word of every segment's bitmap (kTopKWordTile words each); blocks list the candidate
// passes' blocks (kernels/common/segments.h: make_slice_blocks), or are null for a single
// segment, which then uses `single_slices` blocks.
cudaError_t topk_select_segments(Segments<TopKSegment> segments, Tiles tiles, Tiles word_tiles,
                                 const SliceBlock* blocks, int64_t block_count,
                                 int32_t single_slices, int64_t total_n, int64_t total_k,
                                 int64_t total_words, float* values, int32_t* indices,
                                 int32_t* candidates, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream);
// The tile size for the select's element tiles (any size works; this one gives each block eight
// of its 2048-element rounds), the elements per candidate-pass slice (make_slice_blocks) and
// the bitmap words per tile of the ordering passes.
constexpr int32_t kTopKTile = 16384;
constexpr int64_t kTopKSlice = 16384;
constexpr int32_t kTopKWordTile = 8192;

struct TopKPackSegment {
  float* residual;  // error feedback: the selected elements leave it, or null
  int64_t payload;  // byte offset of the payload in the channel
  int64_t k;
  int64_t winners;  // offset of its winners in values / indices
  int32_t int8;     // topk_int8's payload (scale, indices, int8 codes), else (values, indices)
};
// Writes every segment's payload from the selected (values, indices); zeros when flagged.
// scales: one float per segment (workspace for topk_int8's scale). Tiles over the k winners.
cudaError_t topk_pack_segments(Segments<TopKPackSegment> segments, Tiles tiles, const float* values,
                               const int32_t* indices, float* scales, bool any_int8,
                               uint8_t* channel, const uint32_t* nonfinite, cudaStream_t stream);

// -- sparse decode and the float32 accumulators ------------------------------------------------
struct SparseSegment {
  float* out;  // the entry's float32 accumulator
  int64_t n;
  int64_t k;
  int64_t payload;  // byte offset of the payload in a rank's part of the channel
  int32_t int8;     // topk_int8's payload layout
};
// out[index] += value for one rank's payloads (call once per rank, in rank order, for sums
// that are the same on every rank); an index outside [0, n) is skipped and the smallest such
// payload position recorded with atomicMin in *first_bad. Nothing when flagged.
cudaError_t sparse_decode_segments(const uint8_t* rank_channel, Segments<SparseSegment> segments,
                                   Tiles tiles, FlagSlots flags, unsigned long long* first_bad,
                                   cudaStream_t stream);

struct AccumulatorSegment {
  float* out;      // the entry's float32 accumulator (the bucket itself for a float32 bucket)
  int64_t bucket;  // element offset of the entry in the bucket
  float scale;     // finish: bucket = out * scale
};
cudaError_t zero_accumulators(Segments<AccumulatorSegment> segments, Tiles tiles,
                              cudaStream_t stream);
// bucket = out * scale in the bucket's type, NaN when flagged.
cudaError_t finish_accumulators(Segments<AccumulatorSegment> segments, Tiles tiles, FlagSlots flags,
                                void* bucket, ElementType type, cudaStream_t stream);

}  // namespace gradcomp::kernels::cuda
