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
  kLowRank,    // PowerSGD: two allreduce rounds over a whole bucket (see PowerSgdCodec)
};

// Per-call facts a stochastic compressor derives its randomness from, so every rank can
// reproduce the same draw without touching torch's global RNG.
struct CompressContext {
  uint64_t seed = 0;
  int64_t step = 0;
  uint64_t tensor_key = 0;  // stable per parameter (a hash of its name)
  int64_t rank = 0;         // for draws that should differ between ranks (QSGD's rounding)
  // Allreduced low-precision payloads encode prescale * input, so that the sum over ranks
  // cannot overflow (prescale = 1 / world size); decompress decodes the payload as it is.
  double prescale = 1.0;
  // CUDA only: report corrupt indices in received payloads later, without waiting for the
  // device (the DDP hook), instead of at the call (the ops). See CudaKernels::sparse_accumulate.
  bool defer_checks = false;
};

// Public methods check their arguments and call the protected do_* hooks, so implementations
// can trust: `input`/`grad`/`residual` are contiguous 1-D float32 of numel >= 1; `payload` is a
// contiguous 1-D tensor of payload_dtype() with payload_numel(numel) elements; `out` is a
// contiguous 1-D float32 tensor of numel elements. All on the same device.
// What every registered method has: a name, a canonical spec and how ranks combine.
// Per-tensor methods derive from Compressor; PowerSGD, which needs matrix shapes and two
// communication rounds per bucket, derives from this directly (powersgd.h).
class CompressionMethod {
 public:
  virtual ~CompressionMethod() = default;

  virtual std::string name() const = 0;
  // The canonical spec string, e.g. "topk:ratio=0.01".
  virtual std::string spec() const = 0;
  virtual Collective collective() const = 0;
  // True when decompress(compress(x)) == x for every x, so error feedback has nothing to keep.
  virtual bool lossless() const { return false; }
};

// How the bucket-level CUDA path (segmented kernels over every entry of a bucket at once) runs
// a method. kNone: it cannot (variable-size payloads), and buckets holding the method run entry
// by entry.
struct DeviceEncoding {
  enum class Kind { kNone, kDense, kCast, kQsgd, kSign, kInt8, kRandomK, kTopK, kTopKInt8 };
  Kind kind = Kind::kNone;
  int64_t k = 0;          // Top-K family and Random-K: values per tensor
  int bits = 0;           // QSGD: bits per element
  int64_t chunk = 0;      // QSGD, sign, int8: elements per chunk
  bool half = false;      // casts: fp16 (else bf16)
  bool unbiased = false;  // Random-K: values scaled by their stratum size
};

class Compressor : public CompressionMethod {
 public:
  virtual at::ScalarType payload_dtype() const = 0;
  // Elements of payload_dtype() that encode a tensor of `numel` elements. Fixed for a given
  // numel, so every rank knows every payload size without exchanging it, except for
  // variable_size() methods, where it is the most a payload can take.
  virtual int64_t payload_numel(int64_t numel) const = 0;
  // True when payloads differ in size between ranks and steps (threshold): compress reports
  // what it used, and the payload is self-delimiting so decompress can tell where it ends.
  virtual bool variable_size() const { return false; }
  int64_t payload_bytes(int64_t numel) const;
  // The payload of a tensor of `numel` elements as the segmented CUDA kernels produce it (the
  // same bytes as compress()).
  virtual DeviceEncoding device_encoding(int64_t /*numel*/) const { return {}; }

  // payload <- C(input). Returns the payload elements used (payload_numel(numel) unless
  // variable_size()).
  int64_t compress(const at::Tensor& input, const at::Tensor& payload,
                   const CompressContext& ctx) const;
  // out += D(payload), with the ctx that compressed it (Random-K regenerates its indices from
  // it). For variable_size() methods `payload` may run past the encoded payload; returns the
  // elements it consumed.
  int64_t decompress_add(const at::Tensor& payload, const at::Tensor& out,
                         const CompressContext& ctx) const;
  // Error feedback: residual += grad; payload <- C(residual); residual -= D(payload) / prescale.
  int64_t compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                 const at::Tensor& payload, const CompressContext& ctx) const;

 protected:
  virtual int64_t do_compress(const at::Tensor& input, const at::Tensor& payload,
                              const CompressContext& ctx) const = 0;
  virtual int64_t do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                    const CompressContext& ctx) const = 0;
  // The default composes the three steps; methods override it to fuse them into fewer passes.
  virtual int64_t do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                            const at::Tensor& payload,
                                            const CompressContext& ctx) const;
};

// Elements [byte_offset, byte_offset + count * itemsize) of a byte payload as a `dtype` tensor
// (a view: the offset must be a multiple of the item size, which payload layouts guarantee).
at::Tensor payload_part(const at::Tensor& payload, int64_t byte_offset, int64_t count,
                        at::ScalarType dtype);

const char* collective_name(Collective collective);

}  // namespace gradcomp
