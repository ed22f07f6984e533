// Batched modified Gram-Schmidt for PowerSGD's P factors: one thread block per matrix.
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace gradcomp::kernels::cuda {
namespace {

// As in the CPU kernel: a column keeping less than this fraction of its norm after projection
// is numerically dependent on the earlier ones and becomes zero.
constexpr double kDependentColumn = 1e-6;

__global__ void orthonormalize_kernel(float* const* matrices, const int64_t* row_counts,
                                      int64_t cols) {
  float* m = matrices[blockIdx.x];
  const int64_t rows = row_counts[blockIdx.x];
  for (int64_t j = 0; j < cols; ++j) {
    double before = 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      before += static_cast<double>(m[i * cols + j]) * m[i * cols + j];
    }
    before = block_sum(before);
    for (int64_t p = 0; p < j; ++p) {
      double dot = 0.0;
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
        dot += static_cast<double>(m[i * cols + j]) * m[i * cols + p];
      }
      dot = block_sum(dot);
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
        m[i * cols + j] = static_cast<float>(m[i * cols + j] - dot * m[i * cols + p]);
      }
      __syncthreads();  // the next dot product reads every row of column j
    }
    double after = 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      after += static_cast<double>(m[i * cols + j]) * m[i * cols + j];
    }
    after = block_sum(after);
    // inf or NaN skip the dependence test and reach the division, so they propagate.
    const bool dependent =
        isfinite(before) && (after == 0.0 || after <= kDependentColumn * kDependentColumn * before);
    const double inverse = dependent ? 0.0 : 1.0 / sqrt(after);
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      m[i * cols + j] = static_cast<float>(m[i * cols + j] * inverse);
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t orthonormalize_columns(float* const* matrices, const int64_t* rows, int64_t count,
                                   int64_t cols, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  orthonormalize_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(matrices, rows,
                                                                               cols);
  return cudaGetLastError();
}

}  // namespace gradcomp::kernels::cuda
