// Threshold selection on raw float32 buffers (no torch headers): the primitives of the
// threshold compressor and of the sampled-threshold Top-K (Deep Gradient Compression,
// Lin et al. 2018).
//
// Magnitudes are compared as in topk.h: the IEEE-754 bit pattern with the sign cleared
// (magnitude_key), so -0 == +0, inf ranks above every finite value and NaN above inf. A
// threshold is such a key; "selected" means magnitude_key(x) >= threshold_key.
#pragma once

#include <cstdint>
#include <cstring>

#include "task_runner.h"

namespace gradcomp::kernels::cpu {

inline uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & 0x7fffffffu;
}
inline float key_magnitude(uint32_t key) {
  float v;
  std::memcpy(&v, &key, sizeof(v));
  return v;
}

// How many elements of x[0, n) have magnitude_key(x) >= threshold_key.
int64_t count_selected(const float* x, int64_t n, uint32_t threshold_key, const TaskRunner& runner);

// Writes every selected element in ascending index order: values[j] = x[i], indices[j] = i.
// Returns how many were selected. At most `capacity` are written; when more are selected,
// nothing beyond `capacity` is written and the true count is still returned.
int64_t compact_selected(const float* x, int64_t n, uint32_t threshold_key, float* values,
                         int32_t* indices, int64_t capacity, const TaskRunner& runner);

// The magnitude key that about `target` of the n elements reach, estimated from a sample of
// `samples` elements (sampling positions drawn from Philox(key, step); with samples >= n every
// element is used and the result is exact: the target-th largest key). Requires
// 1 <= target <= n and samples >= 1.
uint32_t estimate_threshold(const float* x, int64_t n, int64_t target, int64_t samples,
                            uint64_t key, uint64_t step);

// Sampled-threshold Top-K: the same k elements, in the same order, as topk_select (topk.h),
// found by estimating a threshold that selects a little over k elements from a sample, counting
// and compacting the candidates, and selecting the exact top k among them. When the estimate
// selects fewer than k elements or too many (over 4k + 1024), it re-estimates once from a
// larger sample and then falls back to the exact radix select. Returns the number of passes
// over x that were needed beyond the first estimate (0 when the first threshold worked), so
// callers can report how often the estimate misses: 1 when the second estimate worked, 2 when
// the exact radix select was needed.
int64_t topk_approx_select(const float* x, int64_t n, int64_t k, int64_t samples, uint64_t key,
                           uint64_t step, float* values, int32_t* indices,
                           const TaskRunner& runner);

}  // namespace gradcomp::kernels::cpu
