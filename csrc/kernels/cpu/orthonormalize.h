// Batched orthonormalization of the small rank-r factors of PowerSGD (no torch headers).
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace gradcomp::kernels::cpu {

// For each b in [0, count): matrices[b] is a row-major rows[b] x cols matrix (any rows[b] >= 1;
// when rows[b] < cols only the first rows[b] columns can be orthonormal and the later ones come
// out zero). Orthonormalizes the columns in place by modified Gram-Schmidt, in
// column order. A column whose norm after projection is zero (or below 1e-6 times its norm
// before) is set to zero rather than divided by ~0, so the result never holds inf or NaN
// unless the input does; NaN/inf in a matrix propagate into that matrix only. Matrices are
// distributed over the runner.
void orthonormalize_columns(float* const* matrices, const int64_t* rows, int64_t count,
                            int64_t cols, const TaskRunner& runner);

}  // namespace gradcomp::kernels::cpu
