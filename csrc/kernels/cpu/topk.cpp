#include "topk.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace gradcomp::kernels::cpu {
namespace {

constexpr uint32_t kMagnitudeMask = 0x7fffffffu;
// Below this many elements per chunk the threading overhead outweighs the work.
constexpr int64_t kMinChunk = 1 << 15;

// The magnitude key orders like |x| for finite and infinite values and puts NaN above inf.
inline uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & kMagnitudeMask;
}

// The 31-bit key is resolved in three digits, most significant first.
struct Digit {
  int shift;
  int bits;
};
constexpr std::array<Digit, 3> kDigits{{{20, 11}, {9, 11}, {0, 9}}};
constexpr int kFirstBins = 1 << kDigits[0].bits;

// Finds the bin (scanning from the largest) that holds the need-th largest element.
// On return `need` is how many elements of that bin still have to be taken.
int64_t find_bin(const int64_t* hist, int64_t bins, int64_t& need) {
  for (int64_t b = bins - 1; b > 0; --b) {
    if (hist[b] >= need) return b;
    need -= hist[b];
  }
  return 0;
}

struct Selection {
  // Every key >= take_from is selected; of the keys == tie_key the first tie_quota (by index).
  uint32_t take_from;
  uint32_t tie_key;
  int64_t tie_quota;
};

class TopKSelector {
 public:
  TopKSelector(const float* x, float* residual, const float* grad, int64_t n, int64_t k,
               const TaskRunner& runner)
      : x_(x),
        residual_(residual),
        grad_(grad),
        n_(n),
        k_(k),
        runner_(runner),
        chunks_(n, kMinChunk, runner) {}

  void run(float* values, int32_t* indices) {
    histogram_top_digit();
    int64_t need = k_;
    const auto bin = find_bin(merged_.data(), kFirstBins, need);
    Selection sel;
    std::vector<int64_t> greater(chunks_.size()), ties(chunks_.size(), 0);
    if (merged_[bin] == need) {
      // The whole bin is taken: no need to look at lower digits.
      sel = {static_cast<uint32_t>(bin) << kDigits[0].shift, 0, 0};
      for (int64_t c = 0; c < chunks_.size(); ++c) greater[c] = count_bins_from(c, bin);
    } else {
      sel = refine(bin, need, greater, ties);
    }
    write_selected(sel, greater, ties, values, indices);
  }

 private:
  float load(int64_t i) const { return residual_ != nullptr ? residual_[i] : x_[i]; }

  // Pass 1: histogram of the top digit per chunk, fused with the error-feedback add.
  void histogram_top_digit() {
    hist_.assign(chunks_.size() * kFirstBins, 0);
    runner_.run(chunks_.size(), [&](int64_t c) {
      int64_t* h = hist_.data() + c * kFirstBins;
      const int64_t lo = chunks_.begin(c), hi = chunks_.end(c);
      if (grad_ != nullptr) {
        for (int64_t i = lo; i < hi; ++i) {
          const float v = residual_[i] + grad_[i];
          residual_[i] = v;
          ++h[magnitude_key(v) >> kDigits[0].shift];
        }
      } else {
        for (int64_t i = lo; i < hi; ++i) ++h[magnitude_key(load(i)) >> kDigits[0].shift];
      }
    });
    merged_.assign(kFirstBins, 0);
    for (int64_t c = 0; c < chunks_.size(); ++c) {
      for (int b = 0; b < kFirstBins; ++b) merged_[b] += hist_[c * kFirstBins + b];
    }
  }

  int64_t count_bins_from(int64_t chunk, int64_t first_bin) const {
    int64_t total = 0;
    const int64_t* h = hist_.data() + chunk * kFirstBins;
    for (int64_t b = first_bin; b < kFirstBins; ++b) total += h[b];
    return total;
  }

  // Pass 2 and the lower digits: compact the keys of `bin` (chunk by chunk, so candidates of
  // chunk c are a contiguous range) and resolve the exact k-th key among them.
  Selection refine(int64_t bin, int64_t need, std::vector<int64_t>& greater,
                   std::vector<int64_t>& ties) {
    const int64_t num_chunks = chunks_.size();
    std::vector<int64_t> start(num_chunks + 1, 0);
    for (int64_t c = 0; c < num_chunks; ++c) start[c + 1] = start[c] + hist_[c * kFirstBins + bin];
    std::vector<uint32_t> keys(start[num_chunks]);
    runner_.run(num_chunks, [&](int64_t c) {
      uint32_t* out = keys.data() + start[c];
      for (int64_t i = chunks_.begin(c), hi = chunks_.end(c); i < hi; ++i) {
        const uint32_t key = magnitude_key(load(i));
        if ((key >> kDigits[0].shift) == static_cast<uint32_t>(bin)) *out++ = key;
      }
    });

    uint32_t prefix = static_cast<uint32_t>(bin);
    for (size_t d = 1; d < kDigits.size(); ++d) {
      const Digit digit = kDigits[d];
      const int high_shift = digit.shift + digit.bits;
      const uint32_t mask = (1u << digit.bits) - 1;
      std::vector<int64_t> hist(int64_t{1} << digit.bits, 0);
      for (const uint32_t key : keys) {
        if ((key >> high_shift) == prefix) ++hist[(key >> digit.shift) & mask];
      }
      const auto b = find_bin(hist.data(), static_cast<int64_t>(hist.size()), need);
      prefix = (prefix << digit.bits) | static_cast<uint32_t>(b);
    }
    const uint32_t kth_key = prefix;

    // Per-chunk counts of what is above and at the k-th key, for the output offsets.
    runner_.run(num_chunks, [&](int64_t c) {
      int64_t above = count_bins_from(c, bin + 1), at = 0;
      for (int64_t j = start[c]; j < start[c + 1]; ++j) {
        above += keys[j] > kth_key;
        at += keys[j] == kth_key;
      }
      greater[c] = above;
      ties[c] = at;
    });
    return {kth_key + 1, kth_key, need};
  }

  // Pass 3: every chunk writes its winners at its own offset, in index order.
  void write_selected(const Selection& sel, const std::vector<int64_t>& greater,
                      const std::vector<int64_t>& ties, float* values, int32_t* indices) {
    const int64_t num_chunks = chunks_.size();
    std::vector<int64_t> offset(num_chunks), quota(num_chunks);
    int64_t written = 0, ties_left = sel.tie_quota;
    for (int64_t c = 0; c < num_chunks; ++c) {
      quota[c] = std::min(ties[c], ties_left);
      ties_left -= quota[c];
      offset[c] = written;
      written += greater[c] + quota[c];
    }
    if (written != k_ || ties_left != 0) {
      throw std::logic_error("topk_select: selected " + std::to_string(written) +
                             " elements instead of k=" + std::to_string(k_));
    }
    runner_.run(num_chunks, [&](int64_t c) {
      int64_t pos = offset[c], quota_left = quota[c];
      for (int64_t i = chunks_.begin(c), hi = chunks_.end(c); i < hi; ++i) {
        const float v = load(i);
        const uint32_t key = magnitude_key(v);
        const bool take = key >= sel.take_from || (key == sel.tie_key && quota_left > 0);
        if (!take) continue;
        if (key < sel.take_from) --quota_left;
        values[pos] = v;
        indices[pos] = static_cast<int32_t>(i);
        ++pos;
        if (residual_ != nullptr) residual_[i] = 0.0f;
      }
    });
  }

  const float* x_;
  float* residual_;
  const float* grad_;
  int64_t n_;
  int64_t k_;
  const TaskRunner& runner_;
  Chunking chunks_;
  std::vector<int64_t> hist_;    // per chunk, kFirstBins each
  std::vector<int64_t> merged_;  // all chunks
};

void check_sizes(int64_t n, int64_t k) {
  if (n < 1 || n > INT32_MAX) {
    throw std::invalid_argument("topk_select: n=" + std::to_string(n) +
                                " must be in [1, 2^31-1] (indices are int32)");
  }
  if (k < 1 || k > n) {
    throw std::invalid_argument("topk_select: k=" + std::to_string(k) +
                                " must be in [1, n=" + std::to_string(n) + "]");
  }
}

}  // namespace

void topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                 const TaskRunner& runner) {
  check_sizes(n, k);
  TopKSelector(x, nullptr, nullptr, n, k, runner).run(values, indices);
}

void topk_select_compensated(float* residual, const float* grad, int64_t n, int64_t k,
                             float* values, int32_t* indices, const TaskRunner& runner) {
  check_sizes(n, k);
  TopKSelector(residual, residual, grad, n, k, runner).run(values, indices);
}

}  // namespace gradcomp::kernels::cpu
