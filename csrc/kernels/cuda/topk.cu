// Exact magnitude Top-K on CUDA with the CPU kernel's selection rule (kernels/cpu/topk.h):
// ranked by the magnitude key, ties to the lower index, output in ascending index order.
// Segmented: one run selects the k_s largest of every segment s of a bucket at once (bucket.h);
// the per-tensor entry point (kernels.h) runs it on one segment.
//
// Radix select with candidate compaction, after AIR Top-K (Zhang et al., SC'23). Every element
// gets a distinct 63-bit rank, (magnitude key << 32) | (2^31 - 1 - index), so "the k largest
// ranks" is exactly the CPU's selection, ties included, and no tie handling is needed. Digits
// of 11 bits (8 for the last) are resolved from the top, per segment:
//   1. one pass histograms the top digit of every element (read 1);
//   2. one pass writes the elements above the chosen bin straight to the winners and compacts
//      the indices of those in it into a candidate list, histogramming their next digit
//      (read 2);
//   3. the remaining digits repeat step 2 on the shrinking candidate lists only.
// A kernel with one block per segment picks each digit's bin on the device and stops that
// segment's passes as soon as a whole bin is taken, so nothing waits for the host and later
// launches return at once. The winners are found in no particular order; they are put in
// index order without a sort: each marks its bit in its segment's winner bitmap, tiles of the
// bitmap count their bits, one block scans the counts, and each tile writes its winners at
// their places (a fixed four launches whatever the number of segments; CUB's segmented sort
// waits for the host once a bucket has more than 500 segments, and sorts each segment with
// one block). Appends are block-aggregated (one global atomic per block tile) and histogram
// updates warp-aggregated (one shared atomic per distinct bin per warp: gradients crowd into
// a few bins).
#include <cub/block/block_scan.cuh>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/bucket_common.cuh"
#include "kernels/cuda/kernels.h"

namespace gradcomp::kernels::cuda {
namespace {

struct Digit {
  int shift;
  int bits;
};
constexpr int kDigitCount = 6;
// Bits 62..0 of the rank (bit 31 is always 0).
constexpr Digit kDigits[kDigitCount] = {{52, 11}, {41, 11}, {30, 11}, {19, 11}, {8, 11}, {0, 8}};
constexpr int kMaxBins = 1 << 11;
constexpr int kItems = 8;  // elements per thread per block tile
constexpr int64_t kBlockTile = static_cast<int64_t>(kThreads) * kItems;
// Blocks of a candidate pass over one tensor: candidate lists are short after the first pass.
constexpr int32_t kSingleSlices = 1024;
// counters[d]: candidates written by filter pass d; counters[kDigitCount]: winners written.
constexpr int kCounters = kDigitCount + 1;

struct SelectState {
  uint64_t prefix;  // the rank digits chosen so far
  uint64_t mask;    // the bits they cover
  int64_t need;     // winners still to take from the elements matching prefix
  int take_all;     // the chosen bin holds exactly `need` elements: the next pass takes them all
  int done;         // every winner has been written
};

// Where a run's per-segment state lives inside its workspace.
struct Workspace {
  SelectState* states;
  uint32_t* histograms;              // [segment][digit][bin]
  unsigned long long* counters;      // [segment][kCounters]
  float* winner_values;              // total_k, unordered
  uint32_t* winner_indices;          // total_k, unordered
  uint32_t* bitmap;                  // total_words: bit i of a segment's map set for winner i
  unsigned long long* tile_counts;   // winners per word tile
  unsigned long long* tile_offsets;  // winners before each word tile (all segments)
};

size_t align(size_t bytes) { return (bytes + 255) / 256 * 256; }

__device__ uint64_t rank_of(float v, int64_t i) {
  return (static_cast<uint64_t>(magnitude_bits(v)) << 32) | static_cast<uint64_t>(0x7fffffffLL - i);
}

__device__ uint32_t* histogram_of(uint32_t* histograms, int32_t segment, int digit) {
  return histograms + (static_cast<int64_t>(segment) * kDigitCount + digit) * kMaxBins;
}

// One block per segment: its state, histograms, counters and winner offset.
__global__ void init_kernel(Segments<TopKSegment> segments, Workspace w) {
  const int32_t s = blockIdx.x;
  const TopKSegment seg = segments[s];
  if (threadIdx.x == 0) w.states[s] = SelectState{0u, 0u, seg.k, 0, 0};
  uint32_t* histograms = histogram_of(w.histograms, s, 0);
  for (int b = threadIdx.x; b < kDigitCount * kMaxBins; b += blockDim.x) histograms[b] = 0;
  if (threadIdx.x < kCounters) w.counters[static_cast<int64_t>(s) * kCounters + threadIdx.x] = 0;
}

// One shared-memory increment per distinct bin per warp.
__device__ __forceinline__ void count_in(uint32_t* local, uint32_t bin) {
  const unsigned peers = __match_any_sync(__activemask(), bin);
  if ((threadIdx.x % 32) == static_cast<unsigned>(__ffs(peers) - 1)) {
    atomicAdd(&local[bin], static_cast<uint32_t>(__popc(peers)));
  }
}

// The top digit of every rank is the top 11 bits of the magnitude key.
__global__ void top_histogram_kernel(Segments<TopKSegment> segments, Tiles tiles,
                                     uint32_t* histograms) {
  __shared__ uint32_t local[kMaxBins];
  for (int b = threadIdx.x; b < kMaxBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const Tile tile = tiles[blockIdx.x];
  const TopKSegment seg = segments[tile.segment];
  const float* x = seg.x + tile.begin;
  for (int32_t j = threadIdx.x; j < tile.count; j += blockDim.x) {
    count_in(local, magnitude_bits(x[j]) >> 20);
  }
  __syncthreads();
  uint32_t* histogram = histogram_of(histograms, tile.segment, 0);
  for (int b = threadIdx.x; b < kMaxBins; b += blockDim.x) {
    if (local[b] != 0) atomicAdd(&histogram[b], local[b]);
  }
}

// One block per segment: finds the bin (counted from the top) that holds the need-th largest
// rank among the elements matching the prefix, and narrows the state to it.
__global__ void choose_bin_kernel(uint32_t* histograms, int digit_index, Digit digit,
                                  SelectState* states) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  SelectState* state = states + blockIdx.x;
  const SelectState s = *state;
  __syncthreads();  // every thread has read the state before thread `owner` rewrites it
  if (s.done) return;
  if (s.take_all) {  // the previous pass took the last winners
    if (threadIdx.x == 0) state->done = 1;
    return;
  }
  const uint32_t* histogram = histogram_of(histograms, blockIdx.x, digit_index);
  const int bins = 1 << digit.bits;
  const int per_thread = (bins + kThreads - 1) / kThreads;
  // Thread t covers bins bins-1-t*per_thread down to bins-(t+1)*per_thread.
  long long sum = 0;
  for (int j = 0; j < per_thread; ++j) {
    const int b = bins - 1 - (static_cast<int>(threadIdx.x) * per_thread + j);
    if (b >= 0) sum += histogram[b];
  }
  long long above = 0;
  Scan(scan_storage).ExclusiveSum(sum, above);
  if (!(above < s.need && s.need <= above + sum)) return;  // exactly one thread goes on
  long long remaining = s.need - above;
  for (int j = 0; j < per_thread; ++j) {
    const int b = bins - 1 - (static_cast<int>(threadIdx.x) * per_thread + j);
    if (b < 0) break;
    const long long count = histogram[b];
    if (count >= remaining) {
      state->prefix = s.prefix | (static_cast<uint64_t>(b) << digit.shift);
      state->mask = s.mask | (static_cast<uint64_t>(bins - 1) << digit.shift);
      state->need = remaining;
      state->take_all = count == remaining ? 1 : 0;
      return;
    }
    remaining -= count;
  }
}

// Classifies elements against their segment's chosen prefix: above it -> winner (written out),
// in it -> candidate for the next digit (index appended, next digit histogrammed), or
// everything in it when the state says take_all. kCandidates: the elements are a segment's
// candidate list of pass d - 1 (blocks from `blocks`); otherwise every element (blocks from
// `tiles`).
template <bool kCandidates>
__global__ void filter_kernel(Segments<TopKSegment> segments, Tiles tiles, const SliceBlock* blocks,
                              const int32_t* in, int32_t* out, int digit_index, Digit next,
                              bool has_next, Workspace w) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t local[kMaxBins];
  __shared__ unsigned long long winner_base, candidate_base;
  int32_t segment;
  int64_t first, total, step;  // this block's elements: first, first + step, ... below total
  Tile tile{};
  if (kCandidates) {
    const SliceBlock block = blocks != nullptr ? blocks[blockIdx.x]
                                               : SliceBlock{0, static_cast<int32_t>(blockIdx.x),
                                                            static_cast<int32_t>(gridDim.x)};
    segment = block.segment;
    total = static_cast<int64_t>(
        w.counters[static_cast<int64_t>(segment) * kCounters + digit_index - 1]);
    first = static_cast<int64_t>(block.slice) * kBlockTile;
    step = static_cast<int64_t>(block.slices) * kBlockTile;
  } else {
    tile = tiles[blockIdx.x];
    segment = tile.segment;
    total = tile.count;
    first = 0;
    step = kBlockTile;
  }
  const TopKSegment seg = segments[segment];
  const SelectState* state = w.states + segment;
  if (state->done) return;  // the state does not change while this kernel runs
  const uint64_t prefix = state->prefix, mask = state->mask;
  const bool take_all = state->take_all != 0;
  const bool histogram_next = has_next && !take_all;
  const int bins = 1 << next.bits;
  if (histogram_next) {
    for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
  }
  unsigned long long* counters = w.counters + static_cast<int64_t>(segment) * kCounters;
  const int32_t* in_list = kCandidates ? in + seg.candidates : nullptr;
  int32_t* out_list = out + seg.candidates;
  // The tile loop is uniform across the block, so the barriers inside it are safe.
  for (int64_t start = first; start < total; start += step) {
    int32_t index[kItems];
    float value[kItems];
    unsigned char kind[kItems];  // 0: out, 1: winner, 2: candidate
    unsigned winners = 0, candidates = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int64_t p = start + static_cast<int64_t>(j) * kThreads + threadIdx.x;
      kind[j] = 0;
      index[j] = 0;
      value[j] = 0.0f;
      if (p >= total) continue;
      const int64_t i = kCandidates ? in_list[p] : tile.begin + p;
      const float v = seg.x[i];
      const uint64_t rank = rank_of(v, i);
      const uint64_t top = rank & mask;
      index[j] = static_cast<int32_t>(i);
      value[j] = v;
      if (top > prefix || (top == prefix && take_all)) {
        kind[j] = 1;
        ++winners;
      } else if (top == prefix) {
        kind[j] = 2;
        ++candidates;
      }
    }
    if (histogram_next) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        if (kind[j] == 2) {
          const uint64_t rank = rank_of(value[j], index[j]);
          count_in(local, static_cast<uint32_t>((rank >> next.shift) & (bins - 1)));
        }
      }
    }
    const unsigned long long packed = (static_cast<unsigned long long>(winners) << 32) | candidates;
    unsigned long long offset = 0, tile_total = 0;
    Scan(scan_storage).ExclusiveSum(packed, offset, tile_total);
    if (threadIdx.x == 0) {
      const unsigned long long tile_winners = tile_total >> 32;
      const unsigned long long tile_candidates = tile_total & 0xffffffffull;
      winner_base = tile_winners != 0 ? atomicAdd(&counters[kDigitCount], tile_winners) : 0;
      candidate_base =
          tile_candidates != 0 ? atomicAdd(&counters[digit_index], tile_candidates) : 0;
    }
    __syncthreads();
    unsigned long long wpos = winner_base + (offset >> 32);
    unsigned long long cpos = candidate_base + (offset & 0xffffffffull);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      // The bounds only guard against a broken invariant; they never bind.
      if (kind[j] == 1 && wpos < static_cast<unsigned long long>(seg.k)) {
        w.winner_values[seg.winners + wpos] = value[j];
        w.winner_indices[seg.winners + wpos] = static_cast<uint32_t>(index[j]);
        ++wpos;
      } else if (kind[j] == 2 && cpos < static_cast<unsigned long long>(seg.n)) {
        out_list[cpos++] = index[j];
      }
    }
    __syncthreads();  // scan storage and bases are reused by the next tile
  }
  if (histogram_next) {
    __syncthreads();
    uint32_t* histogram = histogram_of(w.histograms, segment, digit_index + 1);
    for (int b = threadIdx.x; b < bins; b += blockDim.x) {
      if (local[b] != 0) atomicAdd(&histogram[b], local[b]);
    }
  }
}

struct FirstWinner {
  Segments<TopKSegment> segments;
  GRADCOMP_HOST_DEVICE int64_t operator()(int32_t s) const { return segments[s].winners; }
};

// Every winner sets its bit in its segment's bitmap (zeroed before).
__global__ void mark_winners_kernel(Segments<TopKSegment> segments, int64_t total_k, Workspace w) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < total_k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const TopKSegment seg = segments[find_segment(segments.count, j, FirstWinner{segments})];
    const uint32_t i = w.winner_indices[j];
    if (i >= seg.n) continue;  // guards a broken invariant; never taken
    atomicOr(&w.bitmap[seg.bitmap + i / 32], 1u << (i % 32));
  }
}

// One block per word tile: how many winners it holds.
__global__ void count_winners_kernel(Segments<TopKSegment> segments, Tiles word_tiles,
                                     Workspace w) {
  const Tile tile = word_tiles[blockIdx.x];
  const TopKSegment seg = segments[tile.segment];
  unsigned count = 0;
  for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
    count += static_cast<unsigned>(__popc(w.bitmap[seg.bitmap + tile.begin + t]));
  }
  count = block_sum(count);
  if (threadIdx.x == 0) w.tile_counts[blockIdx.x] = count;
}

// One block: the winners before every word tile. Tiles are in segment order and each segment
// holds exactly k of them, so a tile's offset is its place in the winner arrays, its
// segment's `winners` included.
__global__ void scan_tiles_kernel(int64_t tiles, Workspace w) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  __shared__ unsigned long long carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t start = 0; start < tiles; start += kThreads) {
    const int64_t t = start + threadIdx.x;
    const unsigned long long count = t < tiles ? w.tile_counts[t] : 0ull;
    unsigned long long before = 0, total = 0;
    Scan(storage).ExclusiveSum(count, before, total);
    if (t < tiles) w.tile_offsets[t] = carry + before;
    __syncthreads();  // everyone has read carry (and the scan storage is free again)
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
}

// One block per word tile: its winners, in index order, at their places.
__global__ void write_winners_kernel(Segments<TopKSegment> segments, Tiles word_tiles, Workspace w,
                                     float* values, int32_t* indices) {
  using Scan = cub::BlockScan<unsigned, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  __shared__ unsigned long long carry;
  const Tile tile = word_tiles[blockIdx.x];
  const TopKSegment seg = segments[tile.segment];
  const auto first = static_cast<unsigned long long>(seg.winners);
  const auto last = first + static_cast<unsigned long long>(seg.k);
  if (threadIdx.x == 0) carry = w.tile_offsets[blockIdx.x];
  __syncthreads();
  // The loop bound is uniform across the block, so the barriers inside it are safe.
  for (int32_t start = 0; start < tile.count; start += kThreads) {
    const int32_t t = start + static_cast<int32_t>(threadIdx.x);
    uint32_t bits = t < tile.count ? w.bitmap[seg.bitmap + tile.begin + t] : 0u;
    unsigned before = 0, total = 0;
    Scan(storage).ExclusiveSum(static_cast<unsigned>(__popc(bits)), before, total);
    unsigned long long position = carry + before;
    while (bits != 0) {
      const int bit = __ffs(static_cast<int>(bits)) - 1;
      bits &= bits - 1;
      const int64_t i = (tile.begin + t) * 32 + bit;
      if (position >= first && position < last) {  // guards a broken invariant
        indices[position] = static_cast<int32_t>(i);
        values[position] = seg.x[i];
      }
      ++position;
    }
    __syncthreads();  // everyone has read carry (and the scan storage is free again)
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
}

// The workspace carved into its parts; *bytes is what it needs.
void carve(int32_t count, int64_t total_k, int64_t total_words, int64_t word_tiles, void* base,
           Workspace* w, size_t* bytes) {
  const auto n = static_cast<size_t>(count);
  const auto k = static_cast<size_t>(total_k);
  const size_t sizes[] = {align(n * sizeof(SelectState)),
                          align(n * kDigitCount * kMaxBins * sizeof(uint32_t)),
                          align(n * kCounters * sizeof(unsigned long long)),
                          align(k * sizeof(float)),
                          align(k * sizeof(uint32_t)),
                          align(static_cast<size_t>(total_words) * sizeof(uint32_t)),
                          align(static_cast<size_t>(word_tiles) * sizeof(unsigned long long)),
                          align(static_cast<size_t>(word_tiles) * sizeof(unsigned long long))};
  size_t total = 0;
  for (const size_t size : sizes) total += size;
  *bytes = total;
  if (base == nullptr || w == nullptr) return;
  auto* cursor = static_cast<unsigned char*>(base);
  const auto take = [&cursor](size_t size) {
    unsigned char* at = cursor;
    cursor += size;
    return at;
  };
  w->states = reinterpret_cast<SelectState*>(take(sizes[0]));
  w->histograms = reinterpret_cast<uint32_t*>(take(sizes[1]));
  w->counters = reinterpret_cast<unsigned long long*>(take(sizes[2]));
  w->winner_values = reinterpret_cast<float*>(take(sizes[3]));
  w->winner_indices = reinterpret_cast<uint32_t*>(take(sizes[4]));
  w->bitmap = reinterpret_cast<uint32_t*>(take(sizes[5]));
  w->tile_counts = reinterpret_cast<unsigned long long*>(take(sizes[6]));
  w->tile_offsets = reinterpret_cast<unsigned long long*>(take(sizes[7]));
}

// -- packing the selected pairs into payloads -----------------------------------------------

struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// One block per segment: topk_int8's scale, max |v| / 127 over the segment's k values (NaN when
// one is not finite), kept in scales[s] and written to the payload.
__global__ void topk_int8_scales_kernel(Segments<TopKPackSegment> segments, const float* values,
                                        float* scales, uint8_t* channel,
                                        const uint32_t* nonfinite) {
  const TopKPackSegment s = segments[blockIdx.x];
  if (!s.int8) return;
  float max_abs = 0.0f;
  int finite = 1;
  for (int64_t j = threadIdx.x; j < s.k; j += blockDim.x) {
    const float v = values[s.winners + j];
    finite &= isfinite(v) ? 1 : 0;
    max_abs = fmaxf(max_abs, fabsf(v));
  }
  max_abs = block_reduce(max_abs, Max{});
  finite = __syncthreads_and(finite);
  if (threadIdx.x != 0) return;
  const float scale = finite ? max_abs / 127.0f : NAN;
  scales[blockIdx.x] = scale;
  *reinterpret_cast<float*>(channel + s.payload) = *nonfinite != 0 ? 0.0f : scale;
}

__global__ void topk_pack_kernel(Segments<TopKPackSegment> segments, Tiles tiles,
                                 const float* values, const int32_t* indices, const float* scales,
                                 uint8_t* channel, const uint32_t* nonfinite) {
  const Tile tile = tiles[blockIdx.x];
  const TopKPackSegment s = segments[tile.segment];
  const bool bad = *nonfinite != 0;
  uint8_t* payload = channel + s.payload;
  if (!s.int8) {
    auto* out_values = reinterpret_cast<float*>(payload);
    auto* out_indices = reinterpret_cast<int32_t*>(payload + 4 * s.k);
    for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
      const int64_t j = tile.begin + t;
      const float v = values[s.winners + j];
      const int32_t index = indices[s.winners + j];
      out_values[j] = bad ? 0.0f : v;
      out_indices[j] = bad ? 0 : index;
      // What was sent leaves the residual exactly.
      if (s.residual != nullptr && !bad) s.residual[index] = 0.0f;
    }
    return;
  }
  const float scale = scales[tile.segment];
  const bool finite = !isnan(scale);
  const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
  auto* out_indices = reinterpret_cast<int32_t*>(payload + 4);
  auto* out_codes = reinterpret_cast<int8_t*>(payload + 4 + 4 * s.k);
  for (int32_t t = threadIdx.x; t < tile.count; t += blockDim.x) {
    const int64_t j = tile.begin + t;
    const float v = values[s.winners + j];
    const int32_t index = indices[s.winners + j];
    // Round half to even, as the CPU's nearbyint and ATen's round; NaN (a zero value times the
    // infinite inverse of a tiny scale) is a zero code, as on the CPU.
    const float q = rintf(v * inverse);
    const float code = finite && !isnan(q) ? fminf(127.0f, fmaxf(-127.0f, q)) : 0.0f;
    out_indices[j] = bad ? 0 : index;
    out_codes[j] = bad ? 0 : static_cast<int8_t>(code);
    // The residual keeps what int8 could not carry (nothing when a value was not finite).
    if (s.residual != nullptr && !bad) s.residual[index] = finite ? v - code * scale : 0.0f;
  }
}

}  // namespace

cudaError_t topk_workspace_bytes(int32_t count, int64_t total_k, int64_t total_words,
                                 int64_t word_tiles, size_t* bytes) {
  if (count < 1 || total_k < 1 || total_words < 1 || word_tiles < 1) return cudaErrorInvalidValue;
  carve(count, total_k, total_words, word_tiles, nullptr, nullptr, bytes);
  return cudaSuccess;
}

cudaError_t topk_select_segments(Segments<TopKSegment> segments, Tiles tiles, Tiles word_tiles,
                                 const SliceBlock* blocks, int64_t block_count,
                                 int32_t single_slices, int64_t total_n, int64_t total_k,
                                 int64_t total_words, float* values, int32_t* indices,
                                 int32_t* candidates, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream) {
  if (segments.count < 1 || total_n < 1 || total_k < 1 || tiles.count < 1 || word_tiles.count < 1) {
    return cudaErrorInvalidValue;
  }
  Workspace w{};
  size_t needed = 0;
  carve(segments.count, total_k, total_words, word_tiles.count, workspace, &w, &needed);
  if (workspace_bytes < needed) return cudaErrorInvalidValue;
  // Candidate lists of pass d go to half d % 2 (each segment's at its `candidates` offset);
  // pass d + 1 reads them from there.
  int32_t* halves[2] = {candidates, candidates + total_n};
  const auto grid = static_cast<unsigned>(segments.count);
  init_kernel<<<grid, kThreads, 0, stream>>>(segments, w);
  const auto tile_blocks = static_cast<unsigned>(tiles.count);
  top_histogram_kernel<<<tile_blocks, kThreads, 0, stream>>>(segments, tiles, w.histograms);
  const unsigned candidate_blocks =
      blocks != nullptr ? static_cast<unsigned>(block_count) : static_cast<unsigned>(single_slices);
  for (int d = 0; d < kDigitCount; ++d) {
    choose_bin_kernel<<<grid, kThreads, 0, stream>>>(w.histograms, d, kDigits[d], w.states);
    const bool has_next = d + 1 < kDigitCount;
    const Digit next = kDigits[has_next ? d + 1 : d];
    if (d == 0) {
      filter_kernel<false><<<tile_blocks, kThreads, 0, stream>>>(segments, tiles, nullptr, nullptr,
                                                                 halves[0], d, next, has_next, w);
    } else {
      filter_kernel<true><<<candidate_blocks, kThreads, 0, stream>>>(
          segments, tiles, blocks, halves[(d + 1) % 2], halves[d % 2], d, next, has_next, w);
    }
  }
  // Index order: mark, count, scan, write.
  cudaError_t status = cudaMemsetAsync(w.bitmap, 0, static_cast<size_t>(total_words) * 4, stream);
  if (status != cudaSuccess) return status;
  mark_winners_kernel<<<grid_for(total_k), kThreads, 0, stream>>>(segments, total_k, w);
  const auto word_blocks = static_cast<unsigned>(word_tiles.count);
  count_winners_kernel<<<word_blocks, kThreads, 0, stream>>>(segments, word_tiles, w);
  scan_tiles_kernel<<<1, kThreads, 0, stream>>>(word_tiles.count, w);
  write_winners_kernel<<<word_blocks, kThreads, 0, stream>>>(segments, word_tiles, w, values,
                                                             indices);
  return cudaGetLastError();
}

cudaError_t topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                        void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  if (n < 1 || n > INT32_MAX || k < 1 || k > n) return cudaErrorInvalidValue;
  const int64_t words = (n + 31) / 32;
  const int64_t word_tiles = (words + kTopKWordTile - 1) / kTopKWordTile;
  size_t select = 0;
  const cudaError_t status = topk_workspace_bytes(1, k, words, word_tiles, &select);
  if (status != cudaSuccess) return status;
  const size_t lists = align(2 * static_cast<size_t>(n) * sizeof(int32_t));
  if (workspace == nullptr) {
    *workspace_bytes = select + lists;
    return cudaSuccess;
  }
  if (*workspace_bytes < select + lists) return cudaErrorInvalidValue;
  auto* base = static_cast<unsigned char*>(workspace);
  const TopKSegment segment{x, n, k, 0, 0, 0};
  const Tiles tiles{nullptr, (n + kTopKTile - 1) / kTopKTile, n, kTopKTile};
  const Tiles word_list{nullptr, word_tiles, words, kTopKWordTile};
  return topk_select_segments(Segments<TopKSegment>{nullptr, segment, 1}, tiles, word_list, nullptr,
                              0, kSingleSlices, n, k, words, values, indices,
                              reinterpret_cast<int32_t*>(base + select), base, select, stream);
}

cudaError_t topk_pack_segments(Segments<TopKPackSegment> segments, Tiles tiles, const float* values,
                               const int32_t* indices, float* scales, bool any_int8,
                               uint8_t* channel, const uint32_t* nonfinite, cudaStream_t stream) {
  if (tiles.count == 0) return cudaSuccess;
  if (any_int8) {
    topk_int8_scales_kernel<<<static_cast<unsigned>(segments.count), kThreads, 0, stream>>>(
        segments, values, scales, channel, nonfinite);
  }
  topk_pack_kernel<<<static_cast<unsigned>(tiles.count), kThreads, 0, stream>>>(
      segments, tiles, values, indices, scales, channel, nonfinite);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
