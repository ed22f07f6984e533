// gradcomp's exact Top-K (csrc/kernels/cuda/topk.cu) against cub::DeviceTopK (CCCL 3.3's AIR
// Top-K) and a device-to-device copy, on float32 N(0, 1) data: the comparison that decides
// whether the library should replace our select. Needs CCCL >= 3.3 headers (PyPI's
// nvidia-cuda-cccl 13.3 wheel; CUDA 13.0 ships 3.0), so it is not part of the CMake build;
// scripts/gpu_check.sh builds and runs it when GRADCOMP_CCCL33 names such an include directory:
//
//   nvcc -O3 -std=c++17 -arch=sm_90 --fmad=false -I$GRADCOMP_CCCL33 -Icsrc \
//     benchmarks/cuda/topk_vs_cub.cu csrc/kernels/cuda/topk.cu csrc/kernels/common/segments.cpp \
//     -o topk_vs_cub && ./topk_vs_cub 25000000
//
// Variants, each timed with CUDA events (median of 20 after 3 warm-ups), k = 1% and 0.1%:
//   copy        cudaMemcpyAsync of the buffer (device to device)
//   gradcomp    topk_select: exact, the CPU's tie rule, values and indices in index order
//   cub_exact   cub::DeviceTopK::MaxPairs on keys that make every element distinct,
//               (|x| bits << 32) | (2^31 - 1 - index), so it selects exactly what gradcomp does;
//               then the k (index, value) pairs sorted by index: the same output as gradcomp
//   cub_plain   cub::DeviceTopK::MaxPairs on |x| with the index as value: unsorted, ties
//               non-deterministic (what the library gives without our requirements)
// Prints one JSON object.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_topk.cuh>
#include <cuda/iterator>
#include <cuda/std/execution>
#include <functional>
#include <random>
#include <vector>

#include "kernels/common/elementwise.h"
#include "kernels/cuda/kernels.h"

namespace {

#define CHECK(call)                                                               \
  do {                                                                            \
    const cudaError_t status = (call);                                            \
    if (status != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(status)); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

struct RankOf {
  const float* x;
  __host__ __device__ unsigned long long operator()(int64_t i) const {
    return (static_cast<unsigned long long>(gradcomp::kernels::magnitude_bits(x[i])) << 32) |
           static_cast<unsigned long long>(0x7fffffffLL - i);
  }
};

struct AbsOf {
  const float* x;
  __host__ __device__ float operator()(int64_t i) const { return fabsf(x[i]); }
};

__global__ void gather_kernel(const float* x, const int32_t* indices, int64_t k, float* values) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < k;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[i] = x[indices[i]];
  }
}

__global__ void index_of_rank_kernel(const unsigned long long* ranks, int64_t k, int32_t* indices) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < k;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    indices[i] =
        static_cast<int32_t>(0x7fffffffLL - static_cast<int64_t>(ranks[i] & 0xffffffffull));
  }
}

float median_ms(const std::function<void()>& run, cudaStream_t stream) {
  cudaEvent_t begin, end;
  CHECK(cudaEventCreate(&begin));
  CHECK(cudaEventCreate(&end));
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> times;
  for (int i = 0; i < 20; ++i) {
    CHECK(cudaEventRecord(begin, stream));
    run();
    CHECK(cudaEventRecord(end, stream));
    CHECK(cudaEventSynchronize(end));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, begin, end));
    times.push_back(ms);
  }
  CHECK(cudaEventDestroy(begin));
  CHECK(cudaEventDestroy(end));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 25000000;
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  std::vector<float> host(n);
  std::mt19937 random(0);
  std::normal_distribution<float> normal;
  for (auto& v : host) v = normal(random);
  float *x, *copy, *values, *sorted_values;
  int32_t *indices, *sorted_indices, *cub_indices;
  unsigned long long *ranks_out, *index_keys;
  CHECK(cudaMalloc(&x, n * sizeof(float)));
  CHECK(cudaMalloc(&copy, n * sizeof(float)));
  CHECK(cudaMemcpy(x, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  const auto copy_ms = median_ms(
      [&] { CHECK(cudaMemcpyAsync(copy, x, n * sizeof(float), cudaMemcpyDeviceToDevice, stream)); },
      stream);
  std::printf("{\"numel\": %lld, \"device\": ", static_cast<long long>(n));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("\"%s\", \"copy_ms\": %.4f, \"results\": [", prop.name, copy_ms);
  const auto requirements = cuda::execution::require(cuda::execution::determinism::not_guaranteed,
                                                     cuda::execution::output_ordering::unsorted);
  const auto env = cuda::std::execution::env{cuda::stream_ref{stream}, requirements};
  const double ratios[] = {0.01, 0.001};
  for (size_t r = 0; r < 2; ++r) {
    const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(ratios[r] * n + 0.999999));
    CHECK(cudaMalloc(&values, k * sizeof(float)));
    CHECK(cudaMalloc(&sorted_values, k * sizeof(float)));
    CHECK(cudaMalloc(&indices, k * sizeof(int32_t)));
    CHECK(cudaMalloc(&sorted_indices, k * sizeof(int32_t)));
    CHECK(cudaMalloc(&cub_indices, k * sizeof(int32_t)));
    CHECK(cudaMalloc(&ranks_out, k * sizeof(unsigned long long)));
    CHECK(cudaMalloc(&index_keys, k * sizeof(unsigned long long)));

    size_t ours_bytes = 0;
    CHECK(gradcomp::kernels::cuda::topk_select(x, n, k, values, indices, nullptr, &ours_bytes,
                                               stream));
    void* ours_temp;
    CHECK(cudaMalloc(&ours_temp, ours_bytes));
    const auto ours_ms = median_ms(
        [&] {
          CHECK(gradcomp::kernels::cuda::topk_select(x, n, k, values, indices, ours_temp,
                                                     &ours_bytes, stream));
        },
        stream);

    // Exact with cub: distinct keys, then k pairs sorted by index and the values gathered.
    const auto counting = cuda::counting_iterator<int64_t>{0};
    const auto rank_keys = cuda::make_transform_iterator(counting, RankOf{x});
    size_t topk_bytes = 0, sort_bytes = 0;
    CHECK(cub::DeviceTopK::MaxPairs(nullptr, topk_bytes, rank_keys, ranks_out, counting, index_keys,
                                    n, k, env));
    CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, cub_indices, sorted_indices,
                                         static_cast<int>(k), 0, 31, stream));
    void *topk_temp, *sort_temp;
    CHECK(cudaMalloc(&topk_temp, topk_bytes));
    CHECK(cudaMalloc(&sort_temp, sort_bytes));
    const auto exact_ms = median_ms(
        [&] {
          CHECK(cub::DeviceTopK::MaxPairs(topk_temp, topk_bytes, rank_keys, ranks_out, counting,
                                          index_keys, n, k, env));
          index_of_rank_kernel<<<256, 256, 0, stream>>>(ranks_out, k, cub_indices);
          CHECK(cub::DeviceRadixSort::SortKeys(sort_temp, sort_bytes, cub_indices, sorted_indices,
                                               static_cast<int>(k), 0, 31, stream));
          gather_kernel<<<256, 256, 0, stream>>>(x, sorted_indices, k, sorted_values);
        },
        stream);
    // Same selection as ours?
    std::vector<int32_t> ours_host(k), cub_host(k);
    CHECK(cudaStreamSynchronize(stream));
    CHECK(cudaMemcpy(ours_host.data(), indices, k * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(cub_host.data(), sorted_indices, k * sizeof(int32_t), cudaMemcpyDeviceToHost));
    const bool same = ours_host == cub_host;

    // Plain cub on |x|: unsorted, ties not deterministic.
    const auto magnitudes = cuda::make_transform_iterator(counting, AbsOf{x});
    size_t plain_bytes = 0;
    CHECK(cub::DeviceTopK::MaxPairs(nullptr, plain_bytes, magnitudes, sorted_values, counting,
                                    index_keys, n, k, env));
    void* plain_temp;
    CHECK(cudaMalloc(&plain_temp, plain_bytes));
    const auto plain_ms = median_ms(
        [&] {
          CHECK(cub::DeviceTopK::MaxPairs(plain_temp, plain_bytes, magnitudes, sorted_values,
                                          counting, index_keys, n, k, env));
        },
        stream);
    std::printf(
        "%s{\"k\": %lld, \"gradcomp_ms\": %.4f, \"cub_exact_ms\": %.4f, \"cub_plain_ms\": %.4f, "
        "\"gradcomp_vs_copy\": %.3f, \"cub_exact_vs_copy\": %.3f, \"cub_plain_vs_copy\": %.3f, "
        "\"same_selection\": %s}",
        r == 0 ? "" : ", ", static_cast<long long>(k), ours_ms, exact_ms, plain_ms,
        ours_ms / copy_ms, exact_ms / copy_ms, plain_ms / copy_ms, same ? "true" : "false");
    for (void* p : {static_cast<void*>(values), static_cast<void*>(sorted_values),
                    static_cast<void*>(indices), static_cast<void*>(sorted_indices),
                    static_cast<void*>(cub_indices), static_cast<void*>(ranks_out),
                    static_cast<void*>(index_keys), ours_temp, topk_temp, sort_temp, plain_temp}) {
      CHECK(cudaFree(p));
    }
  }
  std::printf("]}\n");
  return 0;
}
