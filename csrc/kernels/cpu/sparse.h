// Sparse (value, index) payload decoding on raw buffers (no torch headers).
#pragma once

#include <cstdint>

namespace gradcomp::kernels::cpu {

// out[indices[i]] += values[i] for i in [0, k). Every index is checked against [0, n) before
// anything is written: returns -1 on success, or the position i of the first index out of
// range, in which case out is left untouched. Duplicate indices accumulate.
int64_t sparse_accumulate(const float* values, const int32_t* indices, int64_t k, float* out,
                          int64_t n);

}  // namespace gradcomp::kernels::cpu
