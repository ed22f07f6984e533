#include "threshold.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/common/philox.h"
#include "topk.h"

namespace gradcomp::kernels::cpu {
namespace {

// Below this many elements per chunk the threading overhead outweighs the work.
constexpr int64_t kMinChunk = 1 << 15;
// Every key fits in 31 bits; a threshold above this selects nothing.
constexpr uint32_t kMaxKey = 0x7fffffffu;
// Counting in blocks keeps the inner accumulator 32-bit, so the compare loop vectorizes.
constexpr int64_t kCountBlock = 1 << 12;
// The write pass counts a block with the vectorized loop first and skips it when empty. At the
// densities thresholds are used for (about 1%) most blocks of 32 are; 32 measured fastest
// (16 pays the per-block reduction too often, 64 stores too many unselected elements).
constexpr int64_t kScanBlock = 32;

// The magnitude key as a signed int: exact since keys fit in 31 bits, and a signed compare
// vectorizes on plain SSE2, which has no unsigned one.
inline int32_t signed_key(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & static_cast<int32_t>(kMaxKey);
}

inline uint32_t count_block(const float* x, int64_t len, int32_t threshold) {
  uint32_t count = 0;
  for (int64_t i = 0; i < len; ++i) count += signed_key(x[i]) >= threshold;
  return count;
}

int64_t count_range(const float* x, int64_t begin, int64_t end, uint32_t threshold_key) {
  if (threshold_key > kMaxKey) return 0;
  const auto threshold = static_cast<int32_t>(threshold_key);
  int64_t total = 0;
  for (int64_t b = begin; b < end; b += kCountBlock) {
    total += count_block(x + b, std::min(kCountBlock, end - b), threshold);
  }
  return total;
}

// Writes the selected elements of [begin, end) to slots out, out + 1, ... but never at or past
// `limit`. Returns the next free slot.
int64_t write_checked(const float* x, int64_t begin, int64_t end, int32_t threshold, int64_t out,
                      int64_t limit, float* values, int32_t* indices) {
  for (int64_t i = begin; i < end && out < limit; ++i) {
    const float v = x[i];
    if (signed_key(v) < threshold) continue;
    values[out] = v;
    indices[out] = static_cast<int32_t>(i);
    ++out;
  }
  return out;
}

// As write_checked, for a range whose selected elements start at slot `out`. `limit` must not
// exceed the slot after the range's last selected element, so every slot below it is written
// with its final value eventually.
void write_range(const float* x, int64_t begin, int64_t end, uint32_t threshold_key, int64_t out,
                 int64_t limit, float* values, int32_t* indices) {
  if (out >= limit) return;
  const auto threshold = static_cast<int32_t>(threshold_key);  // <= kMaxKey, or out == limit
  int64_t i = begin;
  for (; i + kScanBlock <= end && out < limit; i += kScanBlock) {
    const uint32_t selected = count_block(x + i, kScanBlock, threshold);
    if (selected == 0) continue;
    if (out + selected < limit) {
      // Branch-free: store every element at `out`, advance only past selected ones. The slot
      // after the block's last selected one is below limit, so a later selected element of
      // this range overwrites it.
      for (int64_t j = i; j < i + kScanBlock; ++j) {
        const float v = x[j];
        values[out] = v;
        indices[out] = static_cast<int32_t>(j);
        out += signed_key(v) >= threshold;
      }
    } else {
      out = write_checked(x, i, i + kScanBlock, threshold, out, limit, values, indices);
    }
  }
  write_checked(x, i, end, threshold, out, limit, values, indices);
}

// offsets[c] = how many elements of the chunks before c are selected (size chunks + 1).
std::vector<int64_t> chunk_offsets(const float* x, const Chunking& chunks, uint32_t threshold_key,
                                   const TaskRunner& runner) {
  std::vector<int64_t> offsets(chunks.size() + 1, 0);
  runner.run(chunks.size(), [&](int64_t c) {
    offsets[c + 1] = count_range(x, chunks.begin(c), chunks.end(c), threshold_key);
  });
  for (int64_t c = 0; c < chunks.size(); ++c) offsets[c + 1] += offsets[c];
  return offsets;
}

// Each chunk writes its own slot range, clipped to capacity: the same output for any runner.
void write_chunks(const float* x, const Chunking& chunks, const std::vector<int64_t>& offsets,
                  uint32_t threshold_key, float* values, int32_t* indices, int64_t capacity,
                  const TaskRunner& runner) {
  runner.run(chunks.size(), [&](int64_t c) {
    write_range(x, chunks.begin(c), chunks.end(c), threshold_key, offsets[c],
                std::min(offsets[c + 1], capacity), values, indices);
  });
}

void check_indexable(const char* what, int64_t n) {
  if (n < 0 || n > INT32_MAX) {
    throw std::invalid_argument(std::string(what) + ": n=" + std::to_string(n) +
                                " must be in [0, 2^31-1] (indices are int32)");
  }
}

// The rank-th largest key (1-based, clamped to the sample).
uint32_t key_at_rank(std::vector<uint32_t>& keys, int64_t rank) {
  const auto size = static_cast<int64_t>(keys.size());
  rank = std::min(std::max<int64_t>(rank, 1), size);
  std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end(), std::greater<>());
  return keys[rank - 1];
}

// estimate_threshold with the sample taken from words [first_word, first_word + samples) of
// the Philox stream, so a second estimate can use words the first did not.
uint32_t estimate_from(const float* x, int64_t n, int64_t target, int64_t samples, uint64_t key,
                       uint64_t step, uint64_t first_word) {
  std::vector<uint32_t> keys;
  if (samples >= n) {
    keys.resize(n);
    for (int64_t i = 0; i < n; ++i) keys[i] = magnitude_key(x[i]);
    return key_at_rank(keys, target);
  }
  keys.resize(samples);
  const auto range = static_cast<uint32_t>(n);
  // Word w of the stream is word w % 4 of block w / 4: one Philox call per four samples.
  uint64_t word = first_word;
  for (int64_t j = 0; j < samples;) {
    const Philox4 block = philox_block(key, step, word / 4);
    for (uint64_t q = word % 4; q < 4 && j < samples; ++q, ++j, ++word) {
      keys[j] = magnitude_key(x[uniform_below(block.v[q], range)]);
    }
  }
  // ceil(target * samples / n); the product fits in 64 unsigned bits as both are below 2^32.
  const uint64_t scaled = static_cast<uint64_t>(target) * static_cast<uint64_t>(samples);
  const uint64_t un = static_cast<uint64_t>(n);
  return key_at_rank(keys, static_cast<int64_t>(scaled / un + (scaled % un != 0)));
}

// A target above k by a safety margin: 4 standard deviations of the count a sample of
// `samples` keys estimates (sd of the count ~ sqrt(k * n / samples)), and at least `fraction`
// of k, but at most halfway to `capacity`, so that a tight estimate cannot select too many.
int64_t target_above(int64_t k, int64_t n, int64_t samples, double fraction, int64_t capacity) {
  const double sd =
      std::sqrt(static_cast<double>(k) * static_cast<double>(n) / static_cast<double>(samples));
  const double margin = std::max(fraction * static_cast<double>(k), 4.0 * sd) + 1.0;
  const double cap = static_cast<double>(k + (capacity - k) / 2);
  const double target = std::min(static_cast<double>(k) + margin, cap);
  return std::min(n, static_cast<int64_t>(target));
}

// The top k of the candidates selected by the threshold, whose per-chunk offsets are given
// (k <= count). Candidates are in ascending index order and include every element whose key
// reaches the k-th largest key (that key is >= threshold since count >= k), so topk_select on
// them picks exactly what it picks on the whole input, ties included.
void select_from_candidates(const float* x, int64_t k, const Chunking& chunks,
                            const std::vector<int64_t>& offsets, uint32_t threshold_key,
                            float* values, int32_t* indices, const TaskRunner& runner) {
  const int64_t count = offsets.back();
  if (count == k) {
    write_chunks(x, chunks, offsets, threshold_key, values, indices, k, runner);
    return;
  }
  std::vector<float> candidate_values(count);
  std::vector<int32_t> candidate_indices(count);
  write_chunks(x, chunks, offsets, threshold_key, candidate_values.data(), candidate_indices.data(),
               count, runner);
  // Positions among the candidates first, then mapped to positions in x in place.
  topk_select(candidate_values.data(), count, k, values, indices, runner);
  for (int64_t i = 0; i < k; ++i) indices[i] = candidate_indices[indices[i]];
}

}  // namespace

int64_t count_selected(const float* x, int64_t n, uint32_t threshold_key,
                       const TaskRunner& runner) {
  if (n <= 0) return 0;
  const Chunking chunks(n, kMinChunk, runner);
  return chunk_offsets(x, chunks, threshold_key, runner).back();
}

int64_t compact_selected(const float* x, int64_t n, uint32_t threshold_key, float* values,
                         int32_t* indices, int64_t capacity, const TaskRunner& runner) {
  check_indexable("compact_selected", n);
  if (n == 0) return 0;
  const Chunking chunks(n, kMinChunk, runner);
  const auto offsets = chunk_offsets(x, chunks, threshold_key, runner);
  write_chunks(x, chunks, offsets, threshold_key, values, indices, std::max<int64_t>(capacity, 0),
               runner);
  return offsets.back();
}

uint32_t estimate_threshold(const float* x, int64_t n, int64_t target, int64_t samples,
                            uint64_t key, uint64_t step) {
  if (n < 1 || target < 1 || target > n || samples < 1) {
    throw std::invalid_argument(
        "estimate_threshold: need 1 <= target <= n and samples >= 1, got n=" + std::to_string(n) +
        " target=" + std::to_string(target) + " samples=" + std::to_string(samples));
  }
  if (samples < n && n > static_cast<int64_t>(UINT32_MAX)) {
    throw std::invalid_argument("estimate_threshold: n=" + std::to_string(n) +
                                " is too large to sample (positions are 32-bit)");
  }
  return estimate_from(x, n, target, samples, key, step, 0);
}

int64_t topk_approx_select(const float* x, int64_t n, int64_t k, int64_t samples, uint64_t key,
                           uint64_t step, float* values, int32_t* indices,
                           const TaskRunner& runner) {
  if (n < 1 || n > INT32_MAX || k < 1 || k > n || samples < 1) {
    throw std::invalid_argument(
        "topk_approx_select: need 1 <= k <= n <= 2^31-1 and samples >= 1, got n=" +
        std::to_string(n) + " k=" + std::to_string(k) + " samples=" + std::to_string(samples));
  }
  // A sample as large as x is an exact selection, and k == n takes everything: the radix
  // select does either directly, and no estimate can miss (0).
  if (samples >= n || k == n) {
    topk_select(x, n, k, values, indices, runner);
    return 0;
  }
  const int64_t capacity = 4 * k + 1024;
  const Chunking chunks(n, kMinChunk, runner);

  // Aim about a quarter above k: too few candidates cost a whole extra pass, a few too many
  // only a little more compaction.
  const uint32_t first =
      estimate_from(x, n, target_above(k, n, samples, 0.25, capacity), samples, key, step, 0);
  auto offsets = chunk_offsets(x, chunks, first, runner);
  const int64_t first_count = offsets.back();
  if (first_count >= k && first_count <= capacity) {
    select_from_candidates(x, k, chunks, offsets, first, values, indices, runner);
    return 0;
  }

  // Return 1: the second estimate, from 4x the samples taken from the next words of the same
  // stream (independent of the first sample), aiming higher after too few and closer to k
  // after too many.
  const int64_t more = std::min(n, 4 * samples);
  const double fraction = first_count < k ? 0.5 : 0.125;
  const uint32_t second = estimate_from(x, n, target_above(k, n, more, fraction, capacity), more,
                                        key, step, static_cast<uint64_t>(samples));
  // A threshold no higher than one that selected too many selects at least as many, and one no
  // lower than one that selected too few at most as many: skip counting those.
  const bool hopeless = first_count < k ? second >= first : second <= first;
  if (!hopeless) {
    offsets = chunk_offsets(x, chunks, second, runner);
    const int64_t second_count = offsets.back();
    if (second_count >= k && second_count <= capacity) {
      select_from_candidates(x, k, chunks, offsets, second, values, indices, runner);
      return 1;
    }
  }

  // Return 2: the exact radix select, whatever the data.
  topk_select(x, n, k, values, indices, runner);
  return 2;
}

}  // namespace gradcomp::kernels::cpu
