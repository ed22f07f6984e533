#include "randomk.h"

#include <algorithm>

#include "kernels/common/philox.h"

namespace gradcomp::kernels::cpu {
namespace {

// Indices are cheap to draw; chunks only pay off for large k.
constexpr int64_t kMinChunk = 1 << 14;

}  // namespace

void randomk_indices(int64_t n, int64_t k, uint64_t key, uint64_t step, int32_t* indices,
                     const TaskRunner& runner) {
  const Chunking chunks(k, kMinChunk, runner);
  runner.run(chunks.size(), [&](int64_t c) {
    Philox4 words{};
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      // One Philox call yields the words of four consecutive blocks.
      if (i % 4 == 0 || i == chunks.begin(c)) {
        words = philox_block(key, step, static_cast<uint64_t>(i) / 4);
      }
      const int64_t begin = randomk_block_begin(n, k, i);
      const int64_t size = randomk_block_begin(n, k, i + 1) - begin;
      const uint32_t word = words.v[i % 4];
      indices[i] = static_cast<int32_t>(begin + uniform_below(word, static_cast<uint32_t>(size)));
    }
  });
}

void randomk_gather(const float* x, int64_t n, int64_t k, const int32_t* indices, bool unbiased,
                    float* values, const TaskRunner& runner) {
  const Chunking chunks(k, kMinChunk, runner);
  runner.run(chunks.size(), [&](int64_t c) {
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) {
      const float scale =
          unbiased
              ? static_cast<float>(randomk_block_begin(n, k, i + 1) - randomk_block_begin(n, k, i))
              : 1.0f;
      values[i] = x[indices[i]] * scale;
    }
  });
}

}  // namespace gradcomp::kernels::cpu
