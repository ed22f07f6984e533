// Reproducible random inputs shared by the kernel tests (CPU and CUDA).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace gradcomp::kernels::test_inputs {

// n draws of N(0, scale^2) from a fixed seed.
inline std::vector<float> normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

}  // namespace gradcomp::kernels::test_inputs
