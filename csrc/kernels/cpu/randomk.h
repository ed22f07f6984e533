// Random-K index selection and gathering on raw float32 buffers (no torch headers).
//
// Stratified sampling: [0, n) is cut into k blocks, block i = [i * n / k, (i + 1) * n / k)
// (integer division), and one index is drawn uniformly inside each block from Philox word i of
// the stream (key, step) (see common/philox.h). So the k indices are distinct, ascending, the
// same on every rank, thread and device for the same (key, step, n, k), and every element is
// picked with probability 1 / (size of its block) ~= k / n. Nothing touches a global RNG.
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace gradcomp::kernels::cpu {

inline int64_t randomk_block_begin(int64_t n, int64_t k, int64_t block) { return block * n / k; }

// indices[i] for i in [0, k). Requires 1 <= k <= n <= INT32_MAX.
void randomk_indices(int64_t n, int64_t k, uint64_t key, uint64_t step, int32_t* indices,
                     const TaskRunner& runner);

// values[i] = x[indices[i]], times the size of block i when `unbiased` (so that the decoded
// tensor is an unbiased estimate of x). `indices` as produced by randomk_indices(n, k, ...).
void randomk_gather(const float* x, int64_t n, int64_t k, const int32_t* indices, bool unbiased,
                    float* values, const TaskRunner& runner);

}  // namespace gradcomp::kernels::cpu
