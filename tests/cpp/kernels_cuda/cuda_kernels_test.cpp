// Every CUDA kernel against its CPU counterpart on the same inputs. Output buffers start
// poisoned, so an element a kernel forgot to write is caught. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "../kernels/random_inputs.h"
#include "kernels/common/segments.h"
#include "kernels/cpu/orthonormalize.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/randomk.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/threshold.h"
#include "kernels/cpu/topk.h"
#include "kernels/cuda/bucket.h"
#include "kernels/cuda/kernels.h"

namespace gradcomp::kernels {
namespace {

bool has_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device visible"

void check(cudaError_t status) { ASSERT_EQ(status, cudaSuccess) << cudaGetErrorString(status); }

template <typename T>
class Device {
 public:
  explicit Device(size_t count, unsigned char poison = 0xAB) : count_(count) {
    void* memory = nullptr;
    EXPECT_EQ(cudaMalloc(&memory, std::max<size_t>(1, count) * sizeof(T)), cudaSuccess);
    data_ = static_cast<T*>(memory);
    EXPECT_EQ(cudaMemset(data_, poison, std::max<size_t>(1, count) * sizeof(T)), cudaSuccess);
  }
  explicit Device(const std::vector<T>& host) : Device(host.size()) {
    EXPECT_EQ(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~Device() { cudaFree(data_); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  T* get() const { return data_; }
  std::vector<T> host() const {
    std::vector<T> out(count_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

 private:
  T* data_ = nullptr;
  size_t count_;
};

using test_inputs::normal;

const int64_t kSizes[] = {1, 7, 255, 256, 257, 4097, 100003};
constexpr int64_t kChunk = 128;

float stat(const std::vector<uint8_t>& payload, int64_t index) {
  float v;
  std::memcpy(&v, payload.data() + 4 * index, 4);
  return v;
}

// Statistics are block reductions on the GPU and sequential sums on the CPU: equal up to the
// last bit of the float32 result.
void expect_stats_close(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                        int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const float x = stat(a, i), y = stat(b, i);
    if (std::isnan(x) || std::isnan(y)) {
      EXPECT_TRUE(std::isnan(x) && std::isnan(y)) << i;
    } else {
      EXPECT_NEAR(x, y, 2e-7f * std::fabs(y)) << i;
    }
  }
}

TEST(CudaKernels, SignMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : kSizes) {
    auto x = normal(n, 1);
    if (n > 300) x[300 % n] = std::numeric_limits<float>::quiet_NaN();
    const int64_t bytes = cpu::chunked_payload_bytes(n, kChunk, 1, 1);
    std::vector<uint8_t> cpu_payload(bytes);
    cpu::sign_encode(x.data(), n, kChunk, cpu_payload.data(), cpu::serial_runner());
    Device<float> dx(x);
    Device<uint8_t> dp(bytes);
    check(cuda::sign_encode(dx.get(), n, kChunk, dp.get(), nullptr));
    const auto gpu_payload = dp.host();
    const int64_t chunks = cpu::num_chunks(n, kChunk);
    expect_stats_close(gpu_payload, cpu_payload, chunks);
    EXPECT_TRUE(std::equal(gpu_payload.begin() + 4 * chunks, gpu_payload.end(),
                           cpu_payload.begin() + 4 * chunks))
        << n;
    Device<float> out(std::vector<float>(n, 1.0f));
    check(cuda::sign_decode_add(dp.get(), n, kChunk, out.get(), -1.0f, nullptr));
    std::vector<float> expected(n, 1.0f);
    cpu::sign_decode_add(gpu_payload.data(), n, kChunk, expected.data(), cpu::serial_runner(),
                         -1.0f);
    const auto got = out.host();
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(expected[i])) {
        EXPECT_TRUE(std::isnan(got[i]));
      } else {
        EXPECT_EQ(got[i], expected[i]) << i;
      }
    }
  }
}

TEST(CudaKernels, Int8MatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : kSizes) {
    const auto x = normal(n, 2, 5.0f);
    const int64_t bytes = cpu::chunked_payload_bytes(n, kChunk, 2, 8);
    std::vector<uint8_t> cpu_payload(bytes);
    cpu::int8_encode(x.data(), n, kChunk, cpu_payload.data(), cpu::serial_runner());
    Device<float> dx(x);
    Device<uint8_t> dp(bytes);
    check(cuda::int8_encode(dx.get(), n, kChunk, dp.get(), nullptr));
    EXPECT_EQ(dp.host(), cpu_payload) << n;  // min, max and division are exact
    Device<float> out(n);
    check(cudaMemset(out.get(), 0, n * sizeof(float)));
    check(cuda::int8_decode_add(dp.get(), n, kChunk, out.get(), 1.0f, nullptr));
    std::vector<float> expected(n, 0.0f);
    cpu::int8_decode_add(cpu_payload.data(), n, kChunk, expected.data(), cpu::serial_runner());
    EXPECT_EQ(out.host(), expected) << n;
  }
}

TEST(CudaKernels, QsgdMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int bits : {2, 4, 8}) {
    for (const int64_t n : kSizes) {
      const auto x = normal(n, 3);
      const int64_t bytes = cpu::chunked_payload_bytes(n, kChunk, 1, bits);
      std::vector<uint8_t> cpu_payload(bytes);
      cpu::qsgd_encode(x.data(), n, bits, kChunk, 99, 5, cpu_payload.data(), cpu::serial_runner());
      Device<float> dx(x);
      Device<uint8_t> dp(bytes);
      check(cuda::qsgd_encode(dx.get(), n, bits, kChunk, 99, 5, dp.get(), nullptr));
      const auto gpu_payload = dp.host();
      const int64_t chunks = cpu::num_chunks(n, kChunk);
      expect_stats_close(gpu_payload, cpu_payload, chunks);
      // The same Philox draws: codes agree except where a norm differing in its last bit moves
      // an element across a rounding boundary.
      int64_t differ = 0;
      for (int64_t i = 4 * chunks; i < bytes; ++i) differ += gpu_payload[i] != cpu_payload[i];
      EXPECT_LE(differ, 1 + (bytes - 4 * chunks) / 1000) << "bits=" << bits << " n=" << n;
      Device<float> out(n);
      check(cudaMemset(out.get(), 0, n * sizeof(float)));
      check(cuda::qsgd_decode_add(dp.get(), n, bits, kChunk, out.get(), 1.0f, nullptr));
      std::vector<float> expected(n, 0.0f);
      cpu::qsgd_decode_add(gpu_payload.data(), n, bits, kChunk, expected.data(),
                           cpu::serial_runner());
      const auto got = out.host();
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(got[i], expected[i], 1e-6f) << i;
    }
  }
}

TEST(CudaKernels, CastsMatchCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  auto x = normal(100003, 4, 1000.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            65504.0f,
                            65520.0f,
                            1e-8f,
                            -6e-8f,
                            1e10f,
                            std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  const auto n = static_cast<int64_t>(x.size());
  Device<float> dx(x);
  for (const bool half : {true, false}) {
    std::vector<uint16_t> expected(n);
    (half ? cpu::fp16_encode : cpu::bf16_encode)(x.data(), n, 0.5f, expected.data(),
                                                 cpu::serial_runner());
    Device<uint16_t> dp(n);
    check((half ? cuda::fp16_encode : cuda::bf16_encode)(dx.get(), n, 0.5f, dp.get(), nullptr));
    EXPECT_EQ(dp.host(), expected);
    Device<float> out(n);
    check(cudaMemset(out.get(), 0, n * sizeof(float)));
    check((half ? cuda::fp16_decode_add : cuda::bf16_decode_add)(dp.get(), n, out.get(), 2.0f,
                                                                 nullptr));
    std::vector<float> back(n, 0.0f);
    (half ? cpu::fp16_decode_add : cpu::bf16_decode_add)(expected.data(), n, back.data(),
                                                         cpu::serial_runner(), 2.0f);
    // Bit for bit, except that a NaN's payload may differ: x86 keeps the input NaN's bits
    // through arithmetic, the GPU returns its canonical NaN.
    const auto got = out.host();
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool same = std::isnan(got[i]) ? std::isnan(back[i])
                                           : std::memcmp(&got[i], &back[i], sizeof(float)) == 0;
      if (!same && differ++ < 5)
        ADD_FAILURE() << "i=" << i << " cuda " << got[i] << " cpu " << back[i];
    }
    EXPECT_EQ(differ, 0) << (half ? "fp16" : "bf16");
  }
}

TEST(CudaKernels, RandomKDrawsTheCpuIndices) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : kSizes) {
    for (const int64_t k : {int64_t{1}, (n + 9) / 10, n}) {
      std::vector<int32_t> expected(k);
      cpu::randomk_indices(n, k, 1234, 7, expected.data(), cpu::serial_runner());
      Device<int32_t> indices(k);
      check(cuda::randomk_indices(n, k, 1234, 7, indices.get(), nullptr));
      EXPECT_EQ(indices.host(), expected) << "n=" << n << " k=" << k;
      const auto x = normal(n, 5);
      std::vector<float> values(k);
      cpu::randomk_gather(x.data(), n, k, expected.data(), true, values.data(),
                          cpu::serial_runner());
      Device<float> dx(x);
      Device<float> dv(k);
      check(cuda::randomk_gather(dx.get(), n, k, indices.get(), true, dv.get(), nullptr));
      EXPECT_EQ(dv.host(), values);
    }
  }
}

TEST(CudaKernels, SparseAccumulateRecordsTheFirstBadIndex) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> values{1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<int32_t> indices{3, 9, 0, -1};  // 9 and -1 are outside [0, 5)
  Device<float> dv(values);
  Device<int32_t> di(indices);
  Device<float> out(std::vector<float>(5, 0.5f));
  Device<unsigned long long> bad(std::vector<unsigned long long>{4});
  check(cuda::sparse_accumulate(dv.get(), di.get(), 4, out.get(), 5, 2.0f, bad.get(), nullptr));
  EXPECT_EQ(bad.host()[0], 1u);
  EXPECT_EQ(out.host(), (std::vector<float>{6.5f, 0.5f, 0.5f, 2.5f, 0.5f}));
}

TEST(CudaKernels, ThresholdSelectionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : kSizes) {
    const auto x = normal(n, 6);
    const uint32_t key = cpu::magnitude_key(1.5f);
    std::vector<float> values(n);
    std::vector<int32_t> indices(n);
    const int64_t count = cpu::compact_selected(x.data(), n, key, values.data(), indices.data(), n,
                                                cpu::serial_runner());
    Device<float> dx(x);
    Device<uint32_t> dkey(std::vector<uint32_t>{key});
    Device<int32_t> di(n);
    Device<int64_t> dcount(1);
    size_t temp_bytes = 0;
    check(cuda::select_at_least(dx.get(), n, dkey.get(), di.get(), dcount.get(), nullptr,
                                &temp_bytes, nullptr));
    Device<uint8_t> temp(temp_bytes);
    check(cuda::select_at_least(dx.get(), n, dkey.get(), di.get(), dcount.get(), temp.get(),
                                &temp_bytes, nullptr));
    Device<float> dv(n);
    check(cuda::gather_selected(dx.get(), di.get(), dcount.get(), n, dv.get(), nullptr));
    ASSERT_EQ(dcount.host()[0], count) << n;
    const auto got_indices = di.host();
    const auto got_values = dv.host();
    for (int64_t j = 0; j < count; ++j) {
      EXPECT_EQ(got_indices[j], indices[j]);
      EXPECT_EQ(got_values[j], values[j]);
    }
  }
}

// The CPU estimate is the rank-th largest key of its sample; the CUDA sample ranked the same way
// must give the same key, for samples smaller than, equal to and larger than n.
TEST(CudaKernels, SampledKeysGiveTheCpuThresholdEstimate) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : kSizes) {
    const auto x = normal(n, 8);
    for (const int64_t samples : {int64_t{1}, int64_t{4096}, n, 2 * n}) {
      const int64_t target = std::max<int64_t>(1, n / 100);
      const uint64_t key = 0x1234567890abcdefull, step = 11;
      const uint32_t expected = cpu::estimate_threshold(x.data(), n, target, samples, key, step);
      const int64_t count = std::min(samples, n);
      Device<float> dx(x);
      Device<uint32_t> keys(count);
      check(cuda::sample_magnitude_keys(dx.get(), n, samples, key, step, keys.get(), nullptr));
      auto got = keys.host();
      std::sort(got.begin(), got.end(), std::greater<uint32_t>());
      const uint64_t scaled = static_cast<uint64_t>(target) * static_cast<uint64_t>(count);
      const auto un = static_cast<uint64_t>(n);
      int64_t rank = samples >= n ? target : static_cast<int64_t>(scaled / un + (scaled % un != 0));
      rank = std::min(std::max<int64_t>(rank, 1), count);
      EXPECT_EQ(got[rank - 1], expected) << "n=" << n << " samples=" << samples;
    }
  }
}

TEST(CudaKernels, TopKRejectsBadSizes) {
  size_t bytes = 0;
  EXPECT_EQ(cuda::topk_select(nullptr, 10, 0, nullptr, nullptr, nullptr, &bytes, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::topk_select(nullptr, 10, 11, nullptr, nullptr, nullptr, &bytes, nullptr),
            cudaErrorInvalidValue);
}

TEST(CudaKernels, TopKMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n :
       {int64_t{1}, int64_t{7}, int64_t{4097}, int64_t{100003}, int64_t{3000000}}) {
    for (const int kind : {0, 1, 2, 3}) {
      auto x = normal(n, 11);
      if (kind == 1) {  // heavy ties: a few distinct magnitudes, +-0 among them
        for (auto& v : x) v = std::round(v * 2.0f) / 2.0f;
      } else if (kind == 2 && n > 3) {  // inf and NaN rank above every finite value
        x[n / 2] = std::numeric_limits<float>::quiet_NaN();
        x[n / 3] = -std::numeric_limits<float>::infinity();
      } else if (kind == 3) {  // one magnitude everywhere: only the index decides
        for (size_t i = 0; i < x.size(); ++i) x[i] = i % 3 == 0 ? -0.0f : 0.0f;
      }
      for (const int64_t k : {int64_t{1}, (n + 99) / 100, (n + 1) / 2, n}) {
        std::vector<float> values(k);
        std::vector<int32_t> indices(k);
        cpu::topk_select(x.data(), n, k, values.data(), indices.data(), cpu::serial_runner());
        Device<float> dx(x);
        Device<float> dv(k);
        Device<int32_t> di(k);
        size_t bytes = 0;
        check(cuda::topk_select(dx.get(), n, k, dv.get(), di.get(), nullptr, &bytes, nullptr));
        Device<uint8_t> workspace(bytes);
        check(cuda::topk_select(dx.get(), n, k, dv.get(), di.get(), workspace.get(), &bytes,
                                nullptr));
        EXPECT_EQ(di.host(), indices) << "n=" << n << " kind=" << kind << " k=" << k;
        const auto got = dv.host();
        EXPECT_EQ(0, std::memcmp(got.data(), values.data(), k * sizeof(float)));
      }
    }
  }
}

// One segmented select over segments of the given sizes and k, with the tile, slice and
// bitmap-word tables the bucket path builds, checked against the CPU segment by segment.
void expect_segmented_topk_matches_cpu(const std::vector<std::vector<float>>& inputs,
                                       const std::vector<int64_t>& ks, int64_t per_slice) {
  std::vector<float> all;
  std::vector<int64_t> starts, sizes, words;
  for (const auto& x : inputs) {
    starts.push_back(static_cast<int64_t>(all.size()));
    sizes.push_back(static_cast<int64_t>(x.size()));
    words.push_back((static_cast<int64_t>(x.size()) + 31) / 32);
    all.insert(all.end(), x.begin(), x.end());
  }
  Device<float> dx(all);
  std::vector<cuda::TopKSegment> segments;
  int64_t winners = 0, candidates = 0, bitmap = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    segments.push_back({dx.get() + starts[s], sizes[s], ks[s], winners, candidates, bitmap});
    winners += ks[s];
    candidates += sizes[s];
    bitmap += words[s];
  }
  const auto tiles = make_tiles(sizes, cuda::kTopKTile);
  const auto word_tiles = make_tiles(words, cuda::kTopKWordTile);
  const auto blocks = make_slice_blocks(sizes, per_slice, 64);
  Device<cuda::TopKSegment> dsegments(segments);
  Device<Tile> dtiles(tiles);
  Device<Tile> dword_tiles(word_tiles);
  Device<SliceBlock> dblocks(blocks);
  Device<float> values(winners);
  Device<int32_t> indices(winners);
  Device<int32_t> lists(2 * candidates);
  const auto count = static_cast<int32_t>(sizes.size());
  size_t bytes = 0;
  check(cuda::topk_workspace_bytes(count, winners, bitmap, static_cast<int64_t>(word_tiles.size()),
                                   &bytes));
  Device<uint8_t> workspace(bytes);
  const cuda::Segments<cuda::TopKSegment> table{dsegments.get(), {}, count};
  const cuda::Tiles tile_table{dtiles.get(), static_cast<int64_t>(tiles.size()), 0, 0};
  const cuda::Tiles word_table{dword_tiles.get(), static_cast<int64_t>(word_tiles.size()), 0, 0};
  check(cuda::topk_select_segments(table, tile_table, word_table, dblocks.get(),
                                   static_cast<int64_t>(blocks.size()), 0, candidates, winners,
                                   bitmap, values.get(), indices.get(), lists.get(),
                                   workspace.get(), bytes, nullptr));
  const auto got_values = values.host();
  const auto got_indices = indices.host();
  for (size_t s = 0; s < sizes.size(); ++s) {
    const int64_t k = ks[s];
    std::vector<float> expected_values(k);
    std::vector<int32_t> expected_indices(k);
    cpu::topk_select(inputs[s].data(), sizes[s], k, expected_values.data(), expected_indices.data(),
                     cpu::serial_runner());
    const int64_t at = segments[s].winners;
    ASSERT_TRUE(
        std::equal(expected_indices.begin(), expected_indices.end(), got_indices.begin() + at))
        << "segment " << s << " of " << sizes.size() << " (n=" << sizes[s] << ", k=" << k << ")";
    ASSERT_EQ(0, std::memcmp(got_values.data() + at, expected_values.data(), k * sizeof(float)))
        << "segment " << s;
  }
}

TEST(CudaKernels, SegmentedTopKMatchesCpuPerSegment) {
  // Very different sizes and k: k = 1, k = n, ties, a segment of one element, an all-equal one,
  // one spanning several bitmap tiles; large segments split into several slices.
  SKIP_WITHOUT_GPU();
  const std::vector<int64_t> sizes{1, 7, 40000, 3, 100003, 257, 5000, 300000};
  const std::vector<int64_t> ks{1, 7, 400, 1, 1001, 129, 5000, 3000};
  std::vector<std::vector<float>> inputs;
  for (size_t s = 0; s < sizes.size(); ++s) {
    auto x = normal(sizes[s], 20 + static_cast<uint32_t>(s));
    if (s == 2) {
      for (auto& v : x) v = std::round(v * 2.0f) / 2.0f;  // heavy ties
    }
    if (s == 5) std::fill(x.begin(), x.end(), -1.5f);  // only the index decides
    inputs.push_back(std::move(x));
  }
  expect_segmented_topk_matches_cpu(inputs, ks, 1000);
}

TEST(CudaKernels, SegmentedTopKWithHundredsOfSegments) {
  // More segments than CUB's segmented sort handles without waiting for the host (500): the
  // select orders its winners itself, so any number works.
  SKIP_WITHOUT_GPU();
  std::mt19937 random(5);
  std::vector<std::vector<float>> inputs;
  std::vector<int64_t> ks;
  for (int s = 0; s < 700; ++s) {
    const int64_t n = 1 + static_cast<int64_t>(random() % 3000);
    inputs.push_back(normal(n, 100 + static_cast<uint32_t>(s)));
    ks.push_back(1 + static_cast<int64_t>(random() % n));
  }
  expect_segmented_topk_matches_cpu(inputs, ks, 16384);
}

TEST(CudaKernels, OrthonormalizeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t cols = 3;
  const std::vector<int64_t> rows{1, 5, 300, 2000};
  std::vector<std::vector<float>> host;
  std::vector<float*> cpu_pointers;
  for (size_t b = 0; b < rows.size(); ++b) {
    host.push_back(normal(rows[b] * cols, 7 + static_cast<uint32_t>(b)));
  }
  std::vector<std::vector<float>> expected = host;
  for (auto& m : expected) cpu_pointers.push_back(m.data());
  cpu::orthonormalize_columns(cpu_pointers.data(), rows.data(), static_cast<int64_t>(rows.size()),
                              cols, cpu::serial_runner());
  std::vector<std::unique_ptr<Device<float>>> matrices;
  std::vector<float*> device_pointers;
  for (const auto& m : host) {
    matrices.push_back(std::make_unique<Device<float>>(m));
    device_pointers.push_back(matrices.back()->get());
  }
  Device<float*> dpointers(device_pointers);
  Device<int64_t> drows(rows);
  check(cuda::orthonormalize_columns(dpointers.get(), drows.get(),
                                     static_cast<int64_t>(rows.size()), cols, nullptr));
  for (size_t b = 0; b < rows.size(); ++b) {
    const auto got = matrices[b]->host();
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[b][i], 1e-5f) << b;
  }
}

}  // namespace
}  // namespace gradcomp::kernels
