#include "compressors/compressor.h"

#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include "compressors/cuda_kernels.h"

namespace gradcomp {
namespace {

void check_flat_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.defined(), what, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, what, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), what,
                    " must be a contiguous 1-D tensor, got shape ", t.sizes(),
                    t.is_contiguous() ? "" : " (non-contiguous)");
  TORCH_CHECK_VALUE(t.numel() >= 1, what, " must have at least one element");
}

void check_payload(const Compressor& c, const at::Tensor& payload, int64_t numel) {
  TORCH_CHECK_VALUE(payload.defined(), c.name(), ": payload is undefined");
  TORCH_CHECK_TYPE(payload.scalar_type() == c.payload_dtype(), c.name(), ": payload must be ",
                   c.payload_dtype(), ", got ", payload.scalar_type());
  TORCH_CHECK_VALUE(payload.dim() == 1 && payload.is_contiguous(), c.name(),
                    ": payload must be a contiguous 1-D tensor, got shape ", payload.sizes());
  TORCH_CHECK_VALUE(payload.numel() == c.payload_numel(numel), c.name(), ": payload has ",
                    payload.numel(), " elements; a tensor of ", numel, " elements needs ",
                    c.payload_numel(numel));
}

// A variable-size payload handed to decompress may be anything up to its capacity (the
// compressor checks its own header against what it is given).
void check_received_payload(const Compressor& c, const at::Tensor& payload, int64_t numel) {
  if (!c.variable_size()) return check_payload(c, payload, numel);
  TORCH_CHECK_VALUE(payload.defined(), c.name(), ": payload is undefined");
  TORCH_CHECK_TYPE(payload.scalar_type() == c.payload_dtype(), c.name(), ": payload must be ",
                   c.payload_dtype(), ", got ", payload.scalar_type());
  TORCH_CHECK_VALUE(payload.dim() == 1 && payload.is_contiguous(), c.name(),
                    ": payload must be a contiguous 1-D tensor, got shape ", payload.sizes());
}

int64_t check_used(const Compressor& c, int64_t used, int64_t available) {
  TORCH_CHECK(used >= 0 && used <= available, c.name(), ": used ", used,
              " payload elements, outside [0, ", available, "]");
  return used;
}

}  // namespace

int64_t Compressor::payload_bytes(int64_t numel) const {
  return payload_numel(numel) * static_cast<int64_t>(c10::elementSize(payload_dtype()));
}

int64_t Compressor::compress(const at::Tensor& input, const at::Tensor& payload,
                             const CompressContext& ctx) const {
  check_flat_float(input, "input");
  check_supported_device(input, name());
  check_payload(*this, payload, input.numel());
  TORCH_CHECK_VALUE(payload.device() == input.device(), name(), ": payload is on ",
                    payload.device(), " but input is on ", input.device());
  return check_used(*this, do_compress(input, payload, ctx), payload.numel());
}

int64_t Compressor::decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                   const CompressContext& ctx) const {
  check_flat_float(out, "out");
  check_supported_device(out, name());
  check_received_payload(*this, payload, out.numel());
  TORCH_CHECK_VALUE(payload.device() == out.device(), name(), ": payload is on ", payload.device(),
                    " but out is on ", out.device());
  return check_used(*this, do_decompress_add(payload, out, ctx), payload.numel());
}

int64_t Compressor::compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                           const at::Tensor& payload,
                                           const CompressContext& ctx) const {
  check_flat_float(grad, "grad");
  check_flat_float(residual, "residual");
  check_supported_device(grad, name());
  TORCH_CHECK_VALUE(grad.numel() == residual.numel(), name(), ": grad has ", grad.numel(),
                    " elements but its residual has ", residual.numel());
  check_payload(*this, payload, grad.numel());
  TORCH_CHECK_VALUE(grad.device() == residual.device() && grad.device() == payload.device(), name(),
                    ": grad, residual and payload must share a device, got ", grad.device(), ", ",
                    residual.device(), ", ", payload.device());
  return check_used(*this, do_compress_with_feedback(grad, residual, payload, ctx),
                    payload.numel());
}

int64_t Compressor::do_compress_with_feedback(const at::Tensor& grad, const at::Tensor& residual,
                                              const at::Tensor& payload,
                                              const CompressContext& ctx) const {
  residual.add_(grad);
  const int64_t used = do_compress(residual, payload, ctx);
  auto sent = at::zeros_like(residual);
  do_decompress_add(payload.narrow(0, 0, used), sent, ctx);
  residual.sub_(ctx.prescale == 1.0 ? sent : sent.div_(ctx.prescale));
  return used;
}

const char* collective_name(Collective collective) {
  switch (collective) {
    case Collective::kAllReduce:
      return "allreduce";
    case Collective::kAllGather:
      return "allgather";
    case Collective::kLowRank:
      return "lowrank";
  }
  return "unknown";
}

at::Tensor payload_part(const at::Tensor& payload, int64_t byte_offset, int64_t count,
                        at::ScalarType dtype) {
  const auto itemsize = static_cast<int64_t>(c10::elementSize(dtype));
  return payload.narrow(0, byte_offset, count * itemsize).view(dtype);
}

}  // namespace gradcomp
