#include "sparse.h"

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

}  // namespace gradcomp::kernels::cpu
