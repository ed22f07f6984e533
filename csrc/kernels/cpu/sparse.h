// Sparse (value, index) payload decoding on raw buffers (no torch headers).
#pragma once

#include <cstdint>

namespace gradcomp::kernels::cpu {

// out[indices[i]] += values[i] for i in [0, k). Every index is checked against [0, n) before
// anything is written: returns -1 on success, or the position i of the first index out of
// range, in which case out is left untouched. Duplicate indices accumulate.
int64_t sparse_accumulate(const float* values, const int32_t* indices, int64_t k, float* out,
                          int64_t n);

// Symmetric int8 for sparse values (Top-K with int8 values): returns scale = max|v| / 127 and
// writes codes[i] = round-half-even(v[i] / scale) in [-127, 127] (all 0 when scale == 0). A
// non-finite value makes the scale NaN, so every value decodes to NaN (the documented
// non-finite policy: it reaches the optimizer, never a residual).
float int8_symmetric_encode(const float* values, int64_t k, int8_t* codes);
// The decoded value of code q: q * scale.
inline float int8_symmetric_decode(int8_t q, float scale) { return static_cast<float>(q) * scale; }

// out[indices[i]] += codes[i] * scale, with the same index checks as sparse_accumulate.
int64_t sparse_accumulate_int8(float scale, const int8_t* codes, const int32_t* indices, int64_t k,
                               float* out, int64_t n);

}  // namespace gradcomp::kernels::cpu
