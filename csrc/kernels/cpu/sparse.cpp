#include "sparse.h"

#include <cmath>
#include <limits>

namespace gradcomp::kernels::cpu {

int64_t sparse_accumulate(const float* values, const int32_t* indices, int64_t k, float* out,
                          int64_t n) {
  // Validate first so a corrupt payload cannot leave a half-written gradient behind.
  for (int64_t i = 0; i < k; ++i) {
    if (indices[i] < 0 || indices[i] >= n) return i;
  }
  // Serial on purpose: payload indices may repeat (several ranks, or a hostile payload), and
  // k is a small fraction of n, so this is cheap next to selection.
  for (int64_t i = 0; i < k; ++i) out[indices[i]] += values[i];
  return -1;
}

float int8_symmetric_encode(const float* values, int64_t k, int8_t* codes) {
  float max_abs = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < k; ++i) {
    finite = finite && std::isfinite(values[i]);
    max_abs = std::fmax(max_abs, std::fabs(values[i]));
  }
  if (!finite) {
    for (int64_t i = 0; i < k; ++i) codes[i] = 0;
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float scale = max_abs / 127.0f;
  const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    // nearbyint rounds half to even in the default rounding mode; the clamp only guards the
    // last ulp of v / scale at max_abs. A scale so small that 1 / scale overflows makes a zero
    // value 0 * inf = NaN: it is still a zero.
    const float q = std::nearbyint(values[i] * inverse);
    codes[i] = std::isnan(q) ? 0 : static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, q)));
  }
  return scale;
}

int64_t sparse_accumulate_int8(float scale, const int8_t* codes, const int32_t* indices, int64_t k,
                               float* out, int64_t n) {
  for (int64_t i = 0; i < k; ++i) {
    if (indices[i] < 0 || indices[i] >= n) return i;
  }
  for (int64_t i = 0; i < k; ++i) out[indices[i]] += int8_symmetric_decode(codes[i], scale);
  return -1;
}

}  // namespace gradcomp::kernels::cpu
