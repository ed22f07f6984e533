// Exact magnitude Top-K on raw float32 buffers (no torch headers).
//
// Selection rule, identical for every entry point and every thread count:
//   * elements are ranked by |x|, compared as the IEEE-754 bit pattern with the sign cleared,
//     so -0 == +0, every +-inf ranks above every finite value, and every NaN ranks above
//     +-inf (a NaN gradient is always sent, never hidden in the residual);
//   * among equal magnitudes the lower index wins;
//   * the k winners are written in ascending index order, values with their sign.
//
// Algorithm: radix select on the 31-bit magnitude key (11 + 11 + 9 bits). One parallel pass
// histograms the top 11 bits, one pass compacts the keys of the bin holding the k-th element,
// the remaining digits are resolved on that small candidate set, and one final pass writes the
// winners. O(n) work, no sort, three reads of the input.
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace gradcomp::kernels::cpu {

// Writes the k elements of largest magnitude of x[0, n) to values[0, k) and their positions
// to indices[0, k). Requires 1 <= k <= n <= INT32_MAX.
void topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                 const TaskRunner& runner);

// Error-feedback form, fused into the same passes:
//   residual += grad (skipped when grad is null); select the top k of the result as above;
//   then zero the selected elements of residual, so residual holds exactly what was not sent.
void topk_select_compensated(float* residual, const float* grad, int64_t n, int64_t k,
                             float* values, int32_t* indices, const TaskRunner& runner);

}  // namespace gradcomp::kernels::cpu
