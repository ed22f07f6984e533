// CUDA kernels on raw device pointers (no torch headers): the same encodings and payload
// layouts as the CPU kernels (kernels/cpu/*.h, whose comments define them), so a payload made
// on one device decodes on the other.
//
// Every function only enqueues work on `stream` (nothing synchronizes or copies to the host)
// and returns the launch status. Sizes are element counts; every pointer is device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace gradcomp::kernels::cuda {

// -- chunked quantizers (kernels/cpu/quantize.h) -----------------------------------------------
// One thread block per chunk: the chunk statistic is a block reduction (in double, so it can
// differ from the CPU's sequential sum in the last bit of the float32 statistic).
cudaError_t qsgd_encode(const float* x, int64_t n, int bits, int64_t chunk, uint64_t key,
                        uint64_t step, uint8_t* payload, cudaStream_t stream);
cudaError_t sign_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream);
cudaError_t int8_encode(const float* x, int64_t n, int64_t chunk, uint8_t* payload,
                        cudaStream_t stream);
// out[i] += alpha * decoded[i].
cudaError_t qsgd_decode_add(const uint8_t* payload, int64_t n, int bits, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream);
cudaError_t sign_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream);
cudaError_t int8_decode_add(const uint8_t* payload, int64_t n, int64_t chunk, float* out,
                            float alpha, cudaStream_t stream);

// -- casts: bit-identical to the CPU kernels and to torch's .half() / .bfloat16() ---------------
cudaError_t fp16_encode(const float* x, int64_t n, float scale, uint16_t* out, cudaStream_t stream);
cudaError_t bf16_encode(const float* x, int64_t n, float scale, uint16_t* out, cudaStream_t stream);
cudaError_t fp16_decode_add(const uint16_t* in, int64_t n, float* out, float alpha,
                            cudaStream_t stream);
cudaError_t bf16_decode_add(const uint16_t* in, int64_t n, float* out, float alpha,
                            cudaStream_t stream);

// -- Random-K (kernels/cpu/randomk.h): the same indices as the CPU for the same key and step --
cudaError_t randomk_indices(int64_t n, int64_t k, uint64_t key, uint64_t step, int32_t* indices,
                            cudaStream_t stream);
cudaError_t randomk_gather(const float* x, int64_t n, int64_t k, const int32_t* indices,
                           bool unbiased, float* values, cudaStream_t stream);

// -- sparse decode --------------------------------------------------------------------------
// out[indices[i]] += alpha * values[i] for every index in [0, n). Out-of-range entries are
// skipped and the smallest such position i is recorded with atomicMin in *first_bad, which the
// caller sets to k (or more) beforehand and reads when it chooses to synchronize: the hot path
// never waits for it. Indices within one payload are distinct for every gradcomp method, so the
// adds never collide and the result is deterministic; decode several ranks' payloads with one
// call each, in rank order, for sums that are identical on every rank.
cudaError_t sparse_accumulate(const float* values, const int32_t* indices, int64_t k, float* out,
                              int64_t n, float alpha, unsigned long long* first_bad,
                              cudaStream_t stream);

// -- exact Top-K (kernels/cpu/topk.h): the same k (value, index) pairs as the CPU kernel ----
// Requires 1 <= k <= n <= INT32_MAX (else cudaErrorInvalidValue). Reads x about twice.
// Workspace: call with workspace == nullptr to get the bytes needed in *workspace_bytes (about
// 8 n + 8 k bytes plus radix-sort storage for k pairs).
cudaError_t topk_select(const float* x, int64_t n, int64_t k, float* values, int32_t* indices,
                        void* workspace, size_t* workspace_bytes, cudaStream_t stream);

// -- threshold selection (kernels/cpu/threshold.h) ------------------------------------------
// The indices i (ascending) with magnitude_key(x[i]) >= *threshold_key (a device pointer), written
// to indices[0, count), and count to *count. `indices` must hold n entries. Temporary storage:
// call with temp == nullptr to get the bytes needed in *temp_bytes.
cudaError_t select_at_least(const float* x, int64_t n, const uint32_t* threshold_key,
                            int32_t* indices, int64_t* count, void* temp, size_t* temp_bytes,
                            cudaStream_t stream);
// values[j] = x[indices[j]] for j < *count (count read on the device; `capacity` bounds the grid).
cudaError_t gather_selected(const float* x, const int32_t* indices, const int64_t* count,
                            int64_t capacity, float* values, cudaStream_t stream);

// The sample cpu::estimate_threshold ranks: keys[j] = magnitude_key(x[p_j]) for
// j < min(samples, n), with p_j drawn from Philox(key, step) word j exactly as on the CPU, or
// p_j = j when samples >= n. Sorting the keys and taking the same rank gives the CPU's estimate.
cudaError_t sample_magnitude_keys(const float* x, int64_t n, int64_t samples, uint64_t key,
                                  uint64_t step, uint32_t* keys, cudaStream_t stream);

// -- PowerSGD orthonormalization (kernels/cpu/orthonormalize.h) -----------------------------
// matrices[b] (row-major rows[b] x cols) for b < count; `matrices` and `rows` are device arrays.
// One thread block per matrix; the same dependent-column rule as the CPU kernel.
cudaError_t orthonormalize_columns(float* const* matrices, const int64_t* rows, int64_t count,
                                   int64_t cols, cudaStream_t stream);

}  // namespace gradcomp::kernels::cuda
