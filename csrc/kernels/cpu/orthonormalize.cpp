#include "orthonormalize.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gradcomp::kernels::cpu {
namespace {

// A column keeping less than this fraction of its norm after projection is dependent on the
// earlier ones up to float32 rounding of the input (~1e-7 relative): zero it instead of
// blowing rounding noise up into a unit vector.
constexpr double kDependentColumn = 1e-6;

double sum_of_squares(const double* v, int64_t rows) {
  double sum = 0.0;
  for (int64_t i = 0; i < rows; ++i) sum += v[i] * v[i];
  return sum;
}

// `work` holds the matrix column by column in double, so each column is contiguous and the
// earlier columns are projected out at full precision.
void orthonormalize_one(float* m, int64_t rows, int64_t cols, std::vector<double>& work) {
  work.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) work[j * rows + i] = m[i * cols + j];
  }
  for (int64_t j = 0; j < cols; ++j) {
    double* v = work.data() + j * rows;
    const double before = sum_of_squares(v, rows);
    // Modified Gram-Schmidt: project out each earlier (orthonormal or zero) column in turn.
    for (int64_t p = 0; p < j; ++p) {
      const double* q = work.data() + p * rows;
      double dot = 0.0;
      for (int64_t i = 0; i < rows; ++i) dot += v[i] * q[i];
      for (int64_t i = 0; i < rows; ++i) v[i] -= dot * q[i];
    }
    const double after = sum_of_squares(v, rows);
    // A non-finite norm fails both tests and reaches the division, so NaN/inf propagate.
    const bool dependent = std::isfinite(before) &&
                           (after == 0.0 || after <= kDependentColumn * kDependentColumn * before);
    if (dependent) {
      std::fill(v, v + rows, 0.0);
    } else {
      const double inverse = 1.0 / std::sqrt(after);
      for (int64_t i = 0; i < rows; ++i) v[i] *= inverse;
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) m[i * cols + j] = static_cast<float>(work[j * rows + i]);
  }
}

}  // namespace

void orthonormalize_columns(float* const* matrices, const int64_t* rows, int64_t count,
                            int64_t cols, const TaskRunner& runner) {
  if (count <= 0 || cols <= 0) return;
  // One task per group of consecutive matrices; each matrix is independent of the others, so
  // the grouping cannot change the result.
  const Chunking chunks(count, 1, runner);
  runner.run(chunks.size(), [&](int64_t c) {
    std::vector<double> work;
    for (int64_t b = chunks.begin(c); b < chunks.end(c); ++b) {
      orthonormalize_one(matrices[b], rows[b], cols, work);
    }
  });
}

}  // namespace gradcomp::kernels::cpu
