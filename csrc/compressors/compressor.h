// The Compressor interface every method implements, on flat fp32 tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace gradcomp {

// How payloads of the same tensor from different ranks combine.
enum class Collective {
  kAllReduce,  // payloads are summable: one allreduce, then one decompress of the sum
  kAllGather,  // payloads are not summable: gather all, decompress each, add
};

// Per-call facts a stochastic compressor derives its randomness from, so every rank can
// reproduce the same draw without touching torch's global RNG.
struct CompressContext {
  uint64_t seed = 0;
  int64_t step = 0;
  uint64_t tensor_key = 0;  // stable per parameter (a hash of its name)
};

// Public methods check their arguments and call the protected do_* hooks, so implementations
// can trust: `input`/`grad`/`residual` are contiguous 1-D float32 of numel >= 1; `payload` is a
// contiguous 1-D tensor of payload_dtype() with payload_numel(numel) elements; `out` is a
// contiguous 1-D float32 tensor of numel elements. All on the same device.
class Compressor {
 public:
  virtual ~Compressor() = default;

  virtual std::string name() const = 0;
  // The canonical spec string, e.g. "topk:ratio=0.01".
  virtual std::string spec() const = 0;
  virtual Collective collective() const = 0;
  virtual at::ScalarType payload_dtype() const = 0;
  // Elements of payload_dtype() that encode a tensor of `numel` elements. Fixed for a given
  // numel, so every rank knows every payload size without exchanging it.
  virtual int64_t payload_numel(int64_t numel) const = 0;
  int64_t payload_bytes(int64_t numel) const;
  // True when decompress(compress(x)) == x for every x, so error feedback has nothing to keep.
  virtual bool lossless() const { return false; }

  // payload <- C(input).
  void compress(const at::Tensor& input, const at::Tensor& payload,
                const CompressContext& ctx) const;
  // out += D(payload).
  void decompress_add(const at::Tensor& payload, const at::Tensor& out) const;
  // Error feedback: residual += grad; payload <- C(residual); residual -= D(payload).
  void compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                              const at::Tensor& payload, const CompressContext& ctx) const;

 protected:
  virtual void do_compress(const at::Tensor& input, const at::Tensor& payload,
                           const CompressContext& ctx) const = 0;
  virtual void do_decompress_add(const at::Tensor& payload, const at::Tensor& out) const = 0;
  // The default composes the three steps; methods override it to fuse them into fewer passes.
  virtual void do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                         const at::Tensor& payload,
                                         const CompressContext& ctx) const;
};

const char* collective_name(Collective collective);

}  // namespace gradcomp
