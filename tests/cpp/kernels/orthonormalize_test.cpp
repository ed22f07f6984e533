#include "kernels/cpu/orthonormalize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "thread_runner.h"

namespace gradcomp::kernels::cpu {
namespace {

using Matrix = std::vector<float>;  // row-major rows x cols

Matrix random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Matrix m(rows * cols);
  for (auto& v : m) v = normal(rng);
  return m;
}

double column_dot(const Matrix& a, const Matrix& b, int64_t rows, int64_t cols, int64_t i,
                  int64_t j) {
  double dot = 0.0;
  for (int64_t r = 0; r < rows; ++r) dot += double{a[r * cols + i]} * double{b[r * cols + j]};
  return dot;
}

void orthonormalize_one(Matrix& m, int64_t rows, int64_t cols,
                        const TaskRunner& runner = serial_runner()) {
  float* pointer = m.data();
  orthonormalize_columns(&pointer, &rows, 1, cols, runner);
}

// Q^T Q == I on the first `nonzero` columns; the rest are exactly zero.
void expect_orthonormal(const Matrix& q, int64_t rows, int64_t cols, int64_t nonzero) {
  for (int64_t i = 0; i < cols; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const double expected = (i == j && i < nonzero) ? 1.0 : 0.0;
      EXPECT_NEAR(column_dot(q, q, rows, cols, i, j), expected, 1e-5)
          << "columns " << i << "," << j << " of " << rows << "x" << cols;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = nonzero; j < cols; ++j) EXPECT_EQ(q[r * cols + j], 0.0f);
  }
}

// Every input column lies in the span of q: its projection Q Q^T a equals a.
void expect_spans(const Matrix& q, const Matrix& a, int64_t rows, int64_t cols) {
  for (int64_t j = 0; j < cols; ++j) {
    const double norm = std::sqrt(column_dot(a, a, rows, cols, j, j));
    std::vector<double> projection(rows, 0.0);
    for (int64_t p = 0; p < cols; ++p) {
      const double coefficient = column_dot(q, a, rows, cols, p, j);
      for (int64_t r = 0; r < rows; ++r) projection[r] += coefficient * q[r * cols + p];
    }
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_NEAR(projection[r], a[r * cols + j], 1e-5 * std::max(norm, 1.0))
          << "row " << r << " column " << j << " of " << rows << "x" << cols;
    }
  }
}

bool has_nan(const Matrix& m) {
  for (const float v : m) {
    if (std::isnan(v)) return true;
  }
  return false;
}

TEST(Orthonormalize, RandomMatricesGetOrthonormalColumnsWithTheSameSpan) {
  for (const int64_t rows : {1, 3, 100}) {
    for (const int64_t cols : {1, 2, 4}) {
      const Matrix a = random_matrix(rows, cols, static_cast<uint32_t>(rows * 10 + cols));
      Matrix q = a;
      orthonormalize_one(q, rows, cols);
      ASSERT_FALSE(has_nan(q));
      // With fewer rows than columns only the first `rows` columns can be independent.
      expect_orthonormal(q, rows, cols, std::min(rows, cols));
      expect_spans(q, a, rows, cols);
    }
  }
}

TEST(Orthonormalize, ColumnOrderIsKept) {
  // Gram-Schmidt in column order: the first column is the first input column normalized, and
  // column j is in the span of input columns 0..j.
  const int64_t rows = 50, cols = 3;
  const Matrix a = random_matrix(rows, cols, 3);
  Matrix q = a;
  orthonormalize_one(q, rows, cols);
  const double norm = std::sqrt(column_dot(a, a, rows, cols, 0, 0));
  for (int64_t r = 0; r < rows; ++r) EXPECT_NEAR(q[r * cols], a[r * cols] / norm, 1e-6);
  // Column 1 is orthogonal to input column 0 and has a positive component along input
  // column 1.
  EXPECT_NEAR(column_dot(q, a, rows, cols, 1, 0), 0.0, 1e-5);
  EXPECT_GT(column_dot(q, a, rows, cols, 1, 1), 0.0);
}

TEST(Orthonormalize, RankDeficientColumnsBecomeZero) {
  const int64_t rows = 40, cols = 4;
  Matrix a = random_matrix(rows, cols, 5);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &a[r * cols];
    row[2] = 2.0f * row[0] - 0.5f * row[1];  // dependent up to float rounding
    row[3] = row[0];                         // an exact copy
  }
  Matrix q = a;
  orthonormalize_one(q, rows, cols);
  ASSERT_FALSE(has_nan(q));
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(q[r * cols + 2], 0.0f) << "row " << r;
    EXPECT_EQ(q[r * cols + 3], 0.0f) << "row " << r;
  }
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 2; ++j) {
      EXPECT_NEAR(column_dot(q, q, rows, cols, i, j), i == j ? 1.0 : 0.0, 1e-5);
    }
  }
  expect_spans(q, a, rows, cols);
}

TEST(Orthonormalize, ZeroColumnsAndZeroMatricesStayZero) {
  Matrix zero(30 * 3, 0.0f);
  orthonormalize_one(zero, 30, 3);
  for (const float v : zero) EXPECT_EQ(v, 0.0f);

  // A zero column in the middle does not disturb the others.
  Matrix a = random_matrix(30, 3, 6);
  for (int64_t r = 0; r < 30; ++r) a[r * 3 + 1] = 0.0f;
  Matrix q = a;
  orthonormalize_one(q, 30, 3);
  ASSERT_FALSE(has_nan(q));
  for (int64_t r = 0; r < 30; ++r) EXPECT_EQ(q[r * 3 + 1], 0.0f);
  EXPECT_NEAR(column_dot(q, q, 30, 3, 0, 0), 1.0, 1e-5);
  EXPECT_NEAR(column_dot(q, q, 30, 3, 2, 2), 1.0, 1e-5);
  EXPECT_NEAR(column_dot(q, q, 30, 3, 0, 2), 0.0, 1e-5);
}

TEST(Orthonormalize, TinyButIndependentColumnsAreNormalized) {
  // Scale alone never makes a column "dependent": the test is relative to its own norm.
  const int64_t rows = 20, cols = 2;
  Matrix a = random_matrix(rows, cols, 7);
  for (auto& v : a) v *= 1e-30f;
  Matrix q = a;
  orthonormalize_one(q, rows, cols);
  expect_orthonormal(q, rows, cols, 2);
}

TEST(Orthonormalize, NanStaysInItsMatrix) {
  const int64_t cols = 3;
  const std::vector<int64_t> rows{10, 7, 12};
  std::vector<Matrix> batch;
  for (size_t b = 0; b < rows.size(); ++b) {
    batch.push_back(random_matrix(rows[b], cols, static_cast<uint32_t>(b + 20)));
  }
  batch[1][4] = std::numeric_limits<float>::quiet_NaN();
  std::vector<Matrix> alone{batch[0], batch[2]};
  orthonormalize_one(alone[0], rows[0], cols);
  orthonormalize_one(alone[1], rows[2], cols);

  std::vector<float*> pointers;
  for (auto& m : batch) pointers.push_back(m.data());
  orthonormalize_columns(pointers.data(), rows.data(), 3, cols, testing::ThreadRunner(3));
  EXPECT_TRUE(has_nan(batch[1]));
  EXPECT_EQ(batch[0], alone[0]);
  EXPECT_EQ(batch[2], alone[1]);
}

TEST(Orthonormalize, InfinityPropagatesAsNonFinite) {
  Matrix a = random_matrix(5, 2, 9);
  a[2] = std::numeric_limits<float>::infinity();
  orthonormalize_one(a, 5, 2);
  bool finite = true;
  for (const float v : a) finite = finite && std::isfinite(v);
  EXPECT_FALSE(finite);
}

TEST(Orthonormalize, BatchesWithDifferentRowsMatchOneAtATime) {
  const int64_t cols = 4;
  std::vector<int64_t> rows;
  std::vector<Matrix> inputs;
  for (int64_t b = 0; b < 50; ++b) {
    rows.push_back(1 + (b * 37) % 120);
    inputs.push_back(random_matrix(rows.back(), cols, static_cast<uint32_t>(100 + b)));
  }
  std::vector<Matrix> serial = inputs, threaded = inputs;
  std::vector<float*> serial_pointers, threaded_pointers;
  for (int64_t b = 0; b < 50; ++b) {
    serial_pointers.push_back(serial[b].data());
    threaded_pointers.push_back(threaded[b].data());
  }
  orthonormalize_columns(serial_pointers.data(), rows.data(), 50, cols, serial_runner());
  orthonormalize_columns(threaded_pointers.data(), rows.data(), 50, cols, testing::ThreadRunner(3));
  for (int64_t b = 0; b < 50; ++b) {
    ASSERT_EQ(std::memcmp(serial[b].data(), threaded[b].data(), serial[b].size() * sizeof(float)),
              0)
        << "matrix " << b;
    Matrix alone = inputs[b];
    orthonormalize_one(alone, rows[b], cols);
    EXPECT_EQ(alone, serial[b]) << "matrix " << b;
    expect_orthonormal(serial[b], rows[b], cols, std::min<int64_t>(rows[b], cols));
    expect_spans(serial[b], inputs[b], rows[b], cols);
  }
}

TEST(Orthonormalize, EmptyBatchIsANoOp) {
  orthonormalize_columns(nullptr, nullptr, 0, 4, serial_runner());
}

}  // namespace
}  // namespace gradcomp::kernels::cpu
