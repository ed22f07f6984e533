#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/common/elementwise.h"
#include "kernels/common/philox.h"

namespace gradcomp::kernels::cpu {
namespace {

using kernels::bfloat16_to_float;
using kernels::float_bits;
using kernels::float_to_bfloat16;
using kernels::float_to_half;
using kernels::half_to_float;

// Below this many elements per task the threading overhead outweighs the work.
constexpr int64_t kMinElementsPerTask = 1 << 15;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// QSGD draws its random words in pieces of this many elements (a multiple of 64).
constexpr int64_t kMaxQsgdChunk = 1024;

float load_float(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
void store_float(uint8_t* p, float v) { std::memcpy(p, &v, sizeof(v)); }

// words[i] = word (first + i) of the Philox stream (key, step), for i in [0, count), with
// `first` a multiple of 4. The rounds of 16 blocks run in lockstep over plain arrays, which the
// compiler can keep in registers and unroll. (GCC 12 does not vectorize the 32x32->64-bit
// multiplies even with AVX2; this RNG is what makes QSGD's encode cost ~8 memcpys.)
void philox_words(uint64_t key, uint64_t step, int64_t first, int64_t count, uint32_t* words) {
  constexpr int kLanes = 16;
  const uint32_t step_lo = static_cast<uint32_t>(step), step_hi = static_cast<uint32_t>(step >> 32);
  for (int64_t done = 0; done < count; done += 4 * kLanes) {
    const uint64_t block0 = static_cast<uint64_t>(first + done) / 4;
    uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      x0[l] = static_cast<uint32_t>(block0 + l);
      x1[l] = static_cast<uint32_t>((block0 + l) >> 32);
      x2[l] = step_lo;
      x3[l] = step_hi;
    }
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      for (int l = 0; l < kLanes; ++l) {
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * x0[l];
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * x2[l];
        const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1[l] ^ k0;
        const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3[l] ^ k1;
        x1[l] = static_cast<uint32_t>(p1);
        x3[l] = static_cast<uint32_t>(p0);
        x0[l] = y0;
        x2[l] = y2;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const int64_t lanes = std::min<int64_t>(kLanes, (count - done + 3) / 4);
    for (int l = 0; l < lanes; ++l) {
      const uint32_t block[4] = {x0[l], x1[l], x2[l], x3[l]};
      for (int w = 0; w < 4 && done + 4 * l + w < count; ++w) words[done + 4 * l + w] = block[w];
    }
  }
}

// Runs chunk_fn(chunk index, first element, end element) for every quantization chunk, with
// tasks of whole chunks (so tasks never share a byte of packed codes).
template <typename ChunkFn>
void for_each_chunk(int64_t n, int64_t chunk, const TaskRunner& runner, const ChunkFn& chunk_fn) {
  const int64_t chunks = num_chunks(n, chunk);
  const Chunking tasks(chunks, std::max<int64_t>(1, kMinElementsPerTask / chunk), runner);
  runner.run(tasks.size(), [&](int64_t t) {
    for (int64_t c = tasks.begin(t); c < tasks.end(t); ++c) {
      chunk_fn(c, c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

// Element-wise work split in ranges.
template <typename RangeFn>
void for_each_range(int64_t n, const TaskRunner& runner, const RangeFn& range_fn) {
  const Chunking tasks(n, kMinElementsPerTask, runner);
  runner.run(tasks.size(), [&](int64_t t) { range_fn(tasks.begin(t), tasks.end(t)); });
}

uint8_t* codes_of(uint8_t* payload, int64_t n, int64_t chunk, int stats) {
  return payload + 4 * stats * num_chunks(n, chunk);
}
const uint8_t* codes_of(const uint8_t* payload, int64_t n, int64_t chunk, int stats) {
  return payload + 4 * stats * num_chunks(n, chunk);
}

}  // namespace

// -- QSGD ------------------------------------------------------------------------------------

void qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key, uint64_t step,
                 uint8_t* payload, const TaskRunner& runner) {
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  // Shifts, not division: a 64-bit idiv per element dominated this loop.
  const int per_byte_log2 = bits == 8 ? 0 : (bits == 4 ? 1 : 2);
  const int64_t slot_mask = per_byte - 1;
  const uint32_t sign_bit = 1u << (bits - 1);
  uint8_t* codes = codes_of(payload, n, chunk, 1);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    double squares = 0.0;
    for (int64_t i = begin; i < end; ++i) squares += static_cast<double>(x[i]) * x[i];
    const float norm = std::isfinite(squares) ? static_cast<float>(std::sqrt(squares)) : kNaN;
    store_float(payload + 4 * c, norm);
    uint8_t* out = codes + begin / per_byte;
    std::fill(out, codes + (end * bits + 7) / 8, 0);
    if (!(norm > 0.0f)) return;  // zero chunk, or NaN statistic: codes stay zero
    const float to_level = static_cast<float>(levels) / norm;
    // chunk is a multiple of 8, so begin is a multiple of 4 (a Philox block boundary).
    uint32_t words[kMaxQsgdChunk];
    for (int64_t part = begin; part < end; part += kMaxQsgdChunk) {
      const int64_t part_end = std::min(end, part + kMaxQsgdChunk);
      philox_words(key, step, part, part_end - part, words);
      for (int64_t i = part; i < part_end; ++i) {
        const uint32_t code = qsgd_code(x[i], to_level, levels, sign_bit, words[i - part]);
        const int64_t j = i - begin;
        out[j >> per_byte_log2] |= static_cast<uint8_t>(code << ((j & slot_mask) * bits));
      }
    }
  });
}

void qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const int levels = (1 << (bits - 1)) - 1;
  const int per_byte = 8 / bits;
  // Shifts, not division: a 64-bit idiv per element dominated this loop.
  const int per_byte_log2 = bits == 8 ? 0 : (bits == 4 ? 1 : 2);
  const int64_t slot_mask = per_byte - 1;
  const uint32_t sign_bit = 1u << (bits - 1);
  const uint32_t mask = (1u << bits) - 1u;
  const uint8_t* codes = codes_of(payload, n, chunk, 1);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float norm = load_float(payload + 4 * c);
    // Every code's value, once per chunk: the inner loop is a table lookup and an add.
    float table[256];
    for (uint32_t code = 0; code <= mask; ++code) {
      const float magnitude = norm * static_cast<float>(code & ~sign_bit) / levels;
      table[code] = alpha * ((code & sign_bit) ? -magnitude : magnitude);
    }
    const uint8_t* in = codes + begin / per_byte;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t j = i - begin;
      out[i] += table[(in[j >> per_byte_log2] >> ((j & slot_mask) * bits)) & mask];
    }
  });
}

// -- scaled sign ------------------------------------------------------------------------------

void sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner) {
  uint8_t* codes = codes_of(payload, n, chunk, 1);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    double total = 0.0;
    for (int64_t i = begin; i < end; ++i) total += std::fabs(x[i]);
    const float mean =
        std::isfinite(total) ? static_cast<float>(total / static_cast<double>(end - begin)) : kNaN;
    store_float(payload + 4 * c, mean);
    uint8_t* out = codes + begin / 8;
    int64_t i = begin;
    for (; i + 8 <= end; i += 8, ++out) {
      uint32_t byte = 0;
      for (int b = 0; b < 8; ++b) byte |= (float_bits(x[i + b]) >> 31) << b;
      *out = static_cast<uint8_t>(byte);
    }
    if (i < end) {
      uint32_t byte = 0;
      for (int b = 0; i + b < end; ++b) byte |= (float_bits(x[i + b]) >> 31) << b;
      *out = static_cast<uint8_t>(byte);
    }
  });
}

void sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const uint8_t* codes = codes_of(payload, n, chunk, 1);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float scale = alpha * load_float(payload + 4 * c);
    const float twice = 2.0f * scale;
    // Branch-free (scale - 2 scale bit), eight elements per code byte, so it vectorizes.
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      const uint32_t byte = codes[i / 8];
      for (int b = 0; b < 8; ++b) {
        out[i + b] += scale - twice * static_cast<float>((byte >> b) & 1u);
      }
    }
    for (; i < end; ++i)
      out[i] += scale - twice * static_cast<float>((codes[i / 8] >> (i % 8)) & 1u);
  });
}

// -- int8 ---------------------------------------------------------------------------------------

void int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner) {
  uint8_t* codes = codes_of(payload, n, chunk, 2);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    float low = x[begin], high = x[begin];
    bool finite = true;
    for (int64_t i = begin; i < end; ++i) {
      low = std::min(low, x[i]);
      high = std::max(high, x[i]);
      finite = finite && std::isfinite(x[i]);
    }
    const float step = finite ? (high - low) / 255.0f : kNaN;
    if (!finite) low = kNaN;
    store_float(payload + 8 * c, low);
    store_float(payload + 8 * c + 4, step);
    uint8_t* out = codes + begin;
    if (!(step > 0.0f)) {  // constant chunk, or NaN statistics
      std::fill(out, out + (end - begin), 0);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      out[i - begin] = int8_code(x[i], low, step);
    }
  });
}

void int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha) {
  const uint8_t* codes = codes_of(payload, n, chunk, 2);
  for_each_chunk(n, chunk, runner, [&](int64_t c, int64_t begin, int64_t end) {
    const float low = load_float(payload + 8 * c);
    const float step = load_float(payload + 8 * c + 4);
    for (int64_t i = begin; i < end; ++i) {
      out[i] += alpha * (low + static_cast<float>(codes[i]) * step);
    }
  });
}

// -- casts --------------------------------------------------------------------------------------

void fp16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = float_to_half(x[i] * scale);
  });
}

void bf16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = float_to_bfloat16(x[i] * scale);
  });
}

void fp16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] += alpha * half_to_float(in[i]);
  });
}

void bf16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha) {
  for_each_range(n, runner, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] += alpha * bfloat16_to_float(in[i]);
  });
}

}  // namespace gradcomp::kernels::cpu
