#include "compressors/quantize_compressor.h"

#include <c10/util/Exception.h>

#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/quantize.h"

namespace gradcomp {
namespace {

namespace k = kernels::cpu;

// Chunks hold at most this many elements, so per-chunk sums stay accurate in float.
constexpr int64_t kMaxChunk = 1 << 20;

int64_t read_chunk(OptionReader& reader, const char* method, int64_t fallback) {
  const int64_t chunk = reader.integer("chunk", fallback, 8, kMaxChunk);
  TORCH_CHECK_VALUE(chunk % 8 == 0, method, ": chunk=", chunk,
                    " must be a multiple of 8 (chunks start on byte boundaries); valid: 8, 16, "
                    "..., ",
                    kMaxChunk);
  return chunk;
}

uint16_t* half_bits(const at::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); }

QuantizeKind cuda_kind(QuantizeCompressor::Kind kind) {
  switch (kind) {
    case QuantizeCompressor::Kind::kQsgd:
      return QuantizeKind::kQsgd;
    case QuantizeCompressor::Kind::kSign:
      return QuantizeKind::kSign;
    case QuantizeCompressor::Kind::kInt8:
      break;
  }
  return QuantizeKind::kInt8;
}

}  // namespace

QuantizeCompressor::QuantizeCompressor(Kind kind, int64_t bits, int64_t chunk)
    : kind_(kind),
      bits_(kind == Kind::kQsgd ? bits : (kind == Kind::kSign ? 1 : 8)),
      chunk_(chunk) {
  TORCH_CHECK_VALUE(kind != Kind::kQsgd || bits == 2 || bits == 4 || bits == 8, "qsgd: bits=", bits,
                    " is not allowed; valid: bits in {2, 4, 8}");
  TORCH_CHECK_VALUE(chunk >= 8 && chunk <= kMaxChunk && chunk % 8 == 0, name(), ": chunk=", chunk,
                    " is out of range; valid: a multiple of 8 in [8, ", kMaxChunk, "]");
}

std::unique_ptr<Compressor> QuantizeCompressor::create_qsgd(const Options& options) {
  OptionReader reader("qsgd", options);
  const int64_t bits = reader.choice("bits", 4, {2, 4, 8});
  // Small chunks: QSGD's variance grows with sqrt(chunk) / levels.
  const int64_t chunk = read_chunk(reader, "qsgd", 128);
  reader.finish();
  return std::make_unique<QuantizeCompressor>(Kind::kQsgd, bits, chunk);
}

std::unique_ptr<Compressor> QuantizeCompressor::create_sign(const Options& options) {
  OptionReader reader("sign", options);
  const int64_t chunk = read_chunk(reader, "sign", 1024);
  reader.finish();
  return std::make_unique<QuantizeCompressor>(Kind::kSign, 1, chunk);
}

std::unique_ptr<Compressor> QuantizeCompressor::create_int8(const Options& options) {
  OptionReader reader("int8", options);
  const int64_t chunk = read_chunk(reader, "int8", 512);
  reader.finish();
  return std::make_unique<QuantizeCompressor>(Kind::kInt8, 8, chunk);
}

std::string QuantizeCompressor::name() const {
  switch (kind_) {
    case Kind::kQsgd:
      return "qsgd";
    case Kind::kSign:
      return "sign";
    case Kind::kInt8:
      return "int8";
  }
  return "unknown";
}

std::string QuantizeCompressor::spec() const {
  std::ostringstream out;
  out << name() << ":";
  if (kind_ == Kind::kQsgd) out << "bits=" << bits_ << ",";
  out << "chunk=" << chunk_;
  return out.str();
}

int64_t QuantizeCompressor::payload_numel(int64_t numel) const {
  const int stats = kind_ == Kind::kInt8 ? 2 : 1;
  return k::chunked_payload_bytes(numel, chunk_, stats, static_cast<int>(bits_));
}

DeviceEncoding QuantizeCompressor::device_encoding(int64_t /*numel*/) const {
  DeviceEncoding encoding;
  switch (kind_) {
    case Kind::kQsgd:
      encoding.kind = DeviceEncoding::Kind::kQsgd;
      break;
    case Kind::kSign:
      encoding.kind = DeviceEncoding::Kind::kSign;
      break;
    case Kind::kInt8:
      encoding.kind = DeviceEncoding::Kind::kInt8;
      break;
  }
  encoding.bits = static_cast<int>(bits_);
  encoding.chunk = chunk_;
  return encoding;
}

int64_t QuantizeCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                        const CompressContext& ctx) const {
  // Rounding draws differ per rank, so ranks' rounding errors average out.
  const uint64_t key =
      kernels::philox_key(ctx.seed ^ (static_cast<uint64_t>(ctx.rank) << 40), ctx.tensor_key);
  if (input.is_cuda()) {
    cuda_kernels(name()).quantize_encode(cuda_kind(kind_), static_cast<int>(bits_), chunk_, key,
                                         static_cast<uint64_t>(ctx.step), input, payload);
    return payload.numel();
  }
  const float* x = input.data_ptr<float>();
  const int64_t n = input.numel();
  uint8_t* p = payload.data_ptr<uint8_t>();
  switch (kind_) {
    case Kind::kQsgd: {
      k::qsgd_encode(x, n, static_cast<int>(bits_), chunk_, key, static_cast<uint64_t>(ctx.step), p,
                     aten_task_runner());
      break;
    }
    case Kind::kSign:
      k::sign_encode(x, n, chunk_, p, aten_task_runner());
      break;
    case Kind::kInt8:
      k::int8_encode(x, n, chunk_, p, aten_task_runner());
      break;
  }
  return payload.numel();
}

void QuantizeCompressor::decode(const at::Tensor& payload, const at::Tensor& out,
                                float alpha) const {
  if (out.is_cuda()) {
    cuda_kernels(name()).quantize_decode_add(cuda_kind(kind_), static_cast<int>(bits_), chunk_,
                                             payload, out, alpha);
    return;
  }
  const uint8_t* p = payload.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  const int64_t n = out.numel();
  switch (kind_) {
    case Kind::kQsgd:
      k::qsgd_decode_add(p, n, static_cast<int>(bits_), chunk_, o, aten_task_runner(), alpha);
      break;
    case Kind::kSign:
      k::sign_decode_add(p, n, chunk_, o, aten_task_runner(), alpha);
      break;
    case Kind::kInt8:
      k::int8_decode_add(p, n, chunk_, o, aten_task_runner(), alpha);
      break;
  }
}

int64_t QuantizeCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                              const CompressContext& /*ctx*/) const {
  decode(payload, out, 1.0f);
  return payload.numel();
}

int64_t QuantizeCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& payload,
                                                      const CompressContext& ctx) const {
  residual.add_(grad);
  do_compress(residual, payload, ctx);
  decode(payload, residual, -1.0f);
  return payload.numel();
}

CastCompressor::CastCompressor(at::ScalarType dtype) : dtype_(dtype) {
  TORCH_CHECK_VALUE(dtype == at::kHalf || dtype == at::kBFloat16,
                    "cast compressor: dtype must be float16 or bfloat16, got ", dtype);
}

std::unique_ptr<Compressor> CastCompressor::create_fp16(const Options& options) {
  OptionReader("fp16", options).finish();
  return std::make_unique<CastCompressor>(at::kHalf);
}

std::unique_ptr<Compressor> CastCompressor::create_bf16(const Options& options) {
  OptionReader("bf16", options).finish();
  return std::make_unique<CastCompressor>(at::kBFloat16);
}

int64_t CastCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                    const CompressContext& ctx) const {
  const auto scale = static_cast<float>(ctx.prescale);
  if (input.is_cuda()) {
    cuda_kernels(name()).cast_encode(input, scale, payload);
    return payload.numel();
  }
  const auto encode = dtype_ == at::kHalf ? &k::fp16_encode : &k::bf16_encode;
  encode(input.data_ptr<float>(), input.numel(), scale, half_bits(payload), aten_task_runner());
  return payload.numel();
}

void CastCompressor::decode(const at::Tensor& payload, const at::Tensor& out, float alpha) const {
  if (out.is_cuda()) return cuda_kernels(name()).cast_decode_add(payload, out, alpha);
  const auto decode_add = dtype_ == at::kHalf ? &k::fp16_decode_add : &k::bf16_decode_add;
  decode_add(half_bits(payload), out.numel(), out.data_ptr<float>(), aten_task_runner(), alpha);
}

int64_t CastCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                          const CompressContext& /*ctx*/) const {
  decode(payload, out, 1.0f);
  return payload.numel();
}

int64_t CastCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                  const at::Tensor& residual,
                                                  const at::Tensor& payload,
                                                  const CompressContext& ctx) const {
  residual.add_(grad);
  do_compress(residual, payload, ctx);
  // The payload holds prescale * residual: subtract it back in the residual's own scale.
  decode(payload, residual, static_cast<float>(-1.0 / ctx.prescale));
  return payload.numel();
}

}  // namespace gradcomp
