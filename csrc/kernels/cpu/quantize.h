// Chunked quantizers on raw float32 buffers (no torch headers): QSGD, scaled sign, int8.
//
// All three split x[0, n) into chunks of `chunk` elements (the last one may be shorter), keep
// one or two float32 statistics per chunk, and pack per-element codes densely into bytes. The
// payload layout is:   [chunk statistics, float32, num_chunks(n, chunk) * stats_per_chunk]
//                      [packed codes, ceil(n * bits / 8) bytes]
// Codes are packed little-endian within each byte: element j of the tensor occupies bits
// [(j % per_byte) * bits, (j % per_byte + 1) * bits) of byte j / per_byte, per_byte = 8 / bits.
// `chunk` must be a positive multiple of 8, so chunk boundaries fall on byte boundaries and
// chunks can be encoded in parallel. Results never depend on the TaskRunner.
//
// Non-finite input: a chunk holding any inf or NaN gets a NaN statistic, so the whole chunk
// decodes to NaN on every rank (a mixed-precision GradScaler then sees it and skips the step).
//
// Every decoder adds alpha times the decoded values to `out` (alpha = -1 subtracts what was
// sent from an error-feedback residual in the same pass).
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace gradcomp::kernels::cpu {

inline int64_t num_chunks(int64_t n, int64_t chunk) { return (n + chunk - 1) / chunk; }
// Bytes of a chunked payload: stats_per_chunk float32 per chunk, then n codes of `bits` bits.
inline int64_t chunked_payload_bytes(int64_t n, int64_t chunk, int stats_per_chunk, int bits) {
  return 4 * stats_per_chunk * num_chunks(n, chunk) + (n * bits + 7) / 8;
}

// QSGD (Alistarh et al. 2017) with s = 2^(bits-1) - 1 levels, bits in {2, 4, 8}.
// Statistic: the chunk's L2 norm. Code: a sign bit (the top bit, set for negative; -0 counts
// as negative) and a level l in [0, s]: with r = |x| / norm * s, l = floor(r) + (u < r -
// floor(r)), u uniform in [0, 1) drawn from Philox(key, step) at stream position = element
// index. Decodes to sign * norm * l / s, an unbiased estimate of x. A zero-norm chunk encodes
// all-zero codes and decodes to zeros.
void qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key, uint64_t step,
                 uint8_t* payload, const TaskRunner& runner);
// out[i] += decoded x[i].
void qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha = 1.0f);

// Scaled sign (EF-SignSGD, Karimireddy et al. 2019), 1 bit per element.
// Statistic: the chunk's mean |x|. Bit set when x is negative (signbit, so -0 is negative).
// Decodes to -scale or +scale.
void sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner);
void sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha = 1.0f);

// Asymmetric int8, 8 bits per element. Statistics: (min, step) per chunk with
// step = (max - min) / 255; code q = round-half-even((x - min) / step) clamped to [0, 255]
// (q = 0 when step == 0). Decodes to min + q * step, within step / 2 of x.
void int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                 const TaskRunner& runner);
void int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                     const TaskRunner& runner, float alpha = 1.0f);

// Casts with a scale: out[i] = half(x[i] * scale) / bfloat16(x[i] * scale), rounding to
// nearest even, overflow to inf, NaN kept NaN: bit-identical to torch's .half() / .bfloat16().
void fp16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner);
void bf16_encode(const float* x, int64_t n, float scale, uint16_t* out, const TaskRunner& runner);
// out[i] += alpha * float(in[i]).
void fp16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha = 1.0f);
void bf16_decode_add(const uint16_t* in, int64_t n, float* out, const TaskRunner& runner,
                     float alpha = 1.0f);

}  // namespace gradcomp::kernels::cpu
