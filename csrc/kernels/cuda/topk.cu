// Exact magnitude Top-K on CUDA with the CPU kernel's selection rule (kernels/cpu/topk.h):
// ranked by the magnitude key, ties to the lower index, output in ascending index order.
//
// Radix select with candidate compaction, after AIR Top-K (Zhang et al., SC'23). Every element
// gets a distinct 63-bit rank, (magnitude key << 32) | (2^31 - 1 - index), so "the k largest
// ranks" is exactly the CPU's selection, ties included, and no tie handling is needed. Digits
// of 11 bits (8 for the last) are resolved from the top:
//   1. one pass histograms the top digit of every element (read 1);
//   2. one pass writes the elements above the chosen bin straight to the output and compacts
//      the indices of those in it into a candidate list, histogramming their next digit
//      (read 2);
//   3. the remaining digits repeat step 2 on the shrinking candidate list only.
// A one-block kernel picks each digit's bin on the device and stops the passes as soon as a
// whole bin is taken, so nothing waits for the host and the launches after that return at
// once. The k winners are written in no particular order, then sorted by index (radix sort of
// k pairs). Appends are block-aggregated: one global atomic per block tile, not per element.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

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
constexpr int kItems = 8;  // elements per thread per tile
constexpr int64_t kTile = static_cast<int64_t>(kThreads) * kItems;
// Candidate lists are short after the first pass: a modest grid-stride grid covers them.
constexpr unsigned kCandidateBlocks = 1024;
// counters[d]: candidates written by filter pass d; counters[kDigitCount]: winners written.
constexpr int kCounters = kDigitCount + 1;

struct SelectState {
  uint64_t prefix;  // the rank digits chosen so far
  uint64_t mask;    // the bits they cover
  int64_t need;     // winners still to take from the elements matching prefix
  int take_all;     // the chosen bin holds exactly `need` elements: the next pass takes them all
  int done;         // every winner has been written
};

__device__ uint64_t rank_of(float v, int64_t i) {
  return (static_cast<uint64_t>(magnitude_bits(v)) << 32) | static_cast<uint64_t>(0x7fffffffLL - i);
}

__global__ void init_kernel(SelectState* state, int64_t k, uint32_t* histograms,
                            unsigned long long* counters) {
  if (threadIdx.x == 0) *state = SelectState{0u, 0u, k, 0, 0};
  for (int b = threadIdx.x; b < kDigitCount * kMaxBins; b += blockDim.x) histograms[b] = 0;
  if (threadIdx.x < kCounters) counters[threadIdx.x] = 0;
}

// The top digit of every rank is the top 11 bits of the magnitude key.
__global__ void top_histogram_kernel(const float* x, int64_t n, uint32_t* histogram) {
  __shared__ uint32_t local[kMaxBins];
  for (int b = threadIdx.x; b < kMaxBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    atomicAdd(&local[magnitude_bits(x[i]) >> 20], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kMaxBins; b += blockDim.x) {
    if (local[b] != 0) atomicAdd(&histogram[b], local[b]);
  }
}

// One block: finds the bin (counted from the top) that holds the need-th largest rank among the
// elements matching the prefix, and narrows the state to it.
__global__ void choose_bin_kernel(const uint32_t* histogram, Digit digit, SelectState* state) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const SelectState s = *state;
  __syncthreads();  // every thread has read the state before thread `owner` rewrites it
  if (s.done) return;
  if (s.take_all) {  // the previous pass took the last winners
    if (threadIdx.x == 0) state->done = 1;
    return;
  }
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

// Classifies elements against the chosen prefix: above it -> winner (written out), in it ->
// candidate for the next digit (index appended, next digit histogrammed), or everything in it
// when the state says take_all. kCandidates: the elements are the indices in `in` (count on the
// device); otherwise every element of x.
template <bool kCandidates>
__global__ void filter_kernel(const float* x, int64_t n, int64_t k, const int32_t* in,
                              const unsigned long long* in_count, const SelectState* state,
                              Digit next, bool has_next, uint32_t* next_histogram, int32_t* out,
                              unsigned long long* out_count, float* winner_values,
                              uint32_t* winner_indices, unsigned long long* winner_count) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t local[kMaxBins];
  __shared__ unsigned long long winner_base, candidate_base;
  if (state->done) return;  // the state does not change while this kernel runs
  const uint64_t prefix = state->prefix, mask = state->mask;
  const bool take_all = state->take_all != 0;
  const bool histogram_next = has_next && !take_all;
  const int bins = 1 << next.bits;
  if (histogram_next) {
    for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
  }
  const auto total = kCandidates ? static_cast<int64_t>(*in_count) : n;
  // The tile loop is uniform across the block, so the barriers inside it are safe.
  for (int64_t start = blockIdx.x * kTile; start < total;
       start += static_cast<int64_t>(gridDim.x) * kTile) {
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
      const int64_t i = kCandidates ? in[p] : p;
      const float v = x[i];
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
        if (histogram_next) atomicAdd(&local[(rank >> next.shift) & (bins - 1)], 1u);
      }
    }
    const unsigned long long packed = (static_cast<unsigned long long>(winners) << 32) | candidates;
    unsigned long long offset = 0, tile_total = 0;
    Scan(scan_storage).ExclusiveSum(packed, offset, tile_total);
    if (threadIdx.x == 0) {
      const unsigned long long tile_winners = tile_total >> 32;
      const unsigned long long tile_candidates = tile_total & 0xffffffffull;
      winner_base = tile_winners != 0 ? atomicAdd(winner_count, tile_winners) : 0;
      candidate_base = tile_candidates != 0 ? atomicAdd(out_count, tile_candidates) : 0;
    }
    __syncthreads();
    unsigned long long w = winner_base + (offset >> 32);
    unsigned long long c = candidate_base + (offset & 0xffffffffull);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      // The bounds only guard against a broken invariant; they never bind.
      if (kind[j] == 1 && w < static_cast<unsigned long long>(k)) {
        winner_values[w] = value[j];
        winner_indices[w] = static_cast<uint32_t>(index[j]);
        ++w;
      } else if (kind[j] == 2 && c < static_cast<unsigned long long>(n)) {
        out[c++] = index[j];
      }
    }
    __syncthreads();  // scan storage and bases are reused by the next tile
  }
  if (histogram_next) {
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) {
      if (local[b] != 0) atomicAdd(&next_histogram[b], local[b]);
    }
  }
}

size_t align(size_t bytes) { return (bytes + 255) / 256 * 256; }

int index_bits(int64_t n) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) < n) ++bits;
  return bits;
}

}  // namespace

cudaError_t topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                        void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  if (n < 1 || n > INT32_MAX || k < 1 || k > n) return cudaErrorInvalidValue;
  const int end_bit = index_bits(n);
  size_t sort_bytes = 0;
  cudaError_t status = cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const float*>(nullptr), static_cast<float*>(nullptr), static_cast<int>(k), 0,
      end_bit, stream);
  if (status != cudaSuccess) return status;
  const size_t state_bytes = align(sizeof(SelectState));
  const size_t histogram_bytes = align(kDigitCount * kMaxBins * sizeof(uint32_t));
  const size_t counter_bytes = align(kCounters * sizeof(unsigned long long));
  const size_t candidate_bytes = align(static_cast<size_t>(n) * sizeof(int32_t));
  const size_t winner_bytes = align(static_cast<size_t>(k) * sizeof(float));
  const size_t total = state_bytes + histogram_bytes + counter_bytes + 2 * candidate_bytes +
                       2 * winner_bytes + align(sort_bytes);
  if (workspace == nullptr) {
    *workspace_bytes = total;
    return cudaSuccess;
  }
  if (*workspace_bytes < total) return cudaErrorInvalidValue;
  auto* cursor = static_cast<unsigned char*>(workspace);
  const auto take = [&cursor](size_t bytes) {
    unsigned char* at = cursor;
    cursor += bytes;
    return at;
  };
  auto* state = reinterpret_cast<SelectState*>(take(state_bytes));
  auto* histograms = reinterpret_cast<uint32_t*>(take(histogram_bytes));
  auto* counters = reinterpret_cast<unsigned long long*>(take(counter_bytes));
  int32_t* candidates[2] = {reinterpret_cast<int32_t*>(take(candidate_bytes)),
                            reinterpret_cast<int32_t*>(take(candidate_bytes))};
  auto* winner_values = reinterpret_cast<float*>(take(winner_bytes));
  auto* winner_indices = reinterpret_cast<uint32_t*>(take(winner_bytes));
  void* sort_temp = take(align(sort_bytes));

  init_kernel<<<1, kThreads, 0, stream>>>(state, k, histograms, counters);
  // A capped grid: each block flushes its shared histogram with global atomics, and gradients
  // crowd into a few bins, so fewer, longer-running blocks contend less.
  const unsigned histogram_blocks = std::min(grid_for((n + 31) / 32), kCandidateBlocks);
  top_histogram_kernel<<<histogram_blocks, kThreads, 0, stream>>>(x, n, histograms);
  for (int d = 0; d < kDigitCount; ++d) {
    choose_bin_kernel<<<1, kThreads, 0, stream>>>(histograms + d * kMaxBins, kDigits[d], state);
    const bool has_next = d + 1 < kDigitCount;
    const Digit next = has_next ? kDigits[d + 1] : kDigits[d];
    uint32_t* next_histogram = histograms + (has_next ? d + 1 : d) * kMaxBins;
    int32_t* out = candidates[d % 2];
    if (d == 0) {
      filter_kernel<false><<<grid_for((n + kItems - 1) / kItems), kThreads, 0, stream>>>(
          x, n, k, nullptr, nullptr, state, next, has_next, next_histogram, out, &counters[d],
          winner_values, winner_indices, &counters[kDigitCount]);
    } else {
      filter_kernel<true><<<kCandidateBlocks, kThreads, 0, stream>>>(
          x, n, k, candidates[(d + 1) % 2], &counters[d - 1], state, next, has_next, next_histogram,
          out, &counters[d], winner_values, winner_indices, &counters[kDigitCount]);
    }
  }
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  return cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, winner_indices,
                                         reinterpret_cast<uint32_t*>(indices), winner_values,
                                         values, static_cast<int>(k), 0, end_bit, stream);
}

}  // namespace gradcomp::kernels::cuda
