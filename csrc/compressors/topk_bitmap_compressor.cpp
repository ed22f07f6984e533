#include "compressors/topk_bitmap_compressor.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/bitwise_left_shift.h>
#include <ATen/ops/bitwise_right_shift.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>
#include <vector>

#include "compressors/topk_compressor.h"

namespace gradcomp {
namespace {

int64_t bitmap_bytes(int64_t n) { return (n + 7) / 8; }

}  // namespace

TopKBitmapCompressor::TopKBitmapCompressor(double ratio, int64_t min_k)
    : ratio_(ratio), min_k_(min_k), selection_(ratio, min_k) {}

std::unique_ptr<Compressor> TopKBitmapCompressor::create(const Options& options) {
  OptionReader reader("topk_bitmap", options);
  const double ratio = reader.real("ratio", 0.1, 0.0, false, 1.0, true);
  const int64_t min_k = TopKCompressor::read_min_k(reader);
  reader.finish();
  return std::make_unique<TopKBitmapCompressor>(ratio, min_k);
}

std::string TopKBitmapCompressor::spec() const {
  std::ostringstream out;
  out << "topk_bitmap:ratio=" << ratio_ << TopKCompressor::min_k_spec(min_k_);
  return out.str();
}

int64_t TopKBitmapCompressor::k(int64_t numel) const {
  return TopKCompressor::k_for(ratio_, numel, min_k_);
}

int64_t TopKBitmapCompressor::payload_numel(int64_t numel) const {
  return 4 + bitmap_bytes(numel) + k(numel);
}

void TopKBitmapCompressor::pack(const at::Tensor& listed, const at::Tensor& payload,
                                int64_t n) const {
  const int64_t k = this->k(n), bytes = bitmap_bytes(n);
  if (payload.is_cuda()) {
    const auto indices = payload_part(listed, 4, k, at::kInt).to(at::kLong);
    const auto sorted = at::sort(indices);
    const auto codes = payload_part(listed, 4 + 4 * k, k, at::kChar);
    auto bits = at::zeros({8 * bytes}, payload.options().dtype(at::kByte));
    bits.index_fill_(0, std::get<0>(sorted), 1);
    const auto weights = at::arange(8, payload.options().dtype(at::kLong));
    const auto bitmap = bits.view({bytes, 8}).to(at::kLong).bitwise_left_shift(weights).sum(1);
    payload.narrow(0, 0, 4).copy_(listed.narrow(0, 0, 4));
    payload.narrow(0, 4, bytes).copy_(bitmap);
    payload_part(payload, 4 + bytes, k, at::kChar)
        .copy_(codes.index_select(0, std::get<1>(sorted)));
    return;
  }
  const uint8_t* in = listed.data_ptr<uint8_t>();
  uint8_t* out = payload.data_ptr<uint8_t>();
  std::vector<int32_t> indices(k);
  std::memcpy(indices.data(), in + 4, 4 * k);
  const auto* codes = reinterpret_cast<const int8_t*>(in + 4 + 4 * k);
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return indices[a] < indices[b]; });
  std::memcpy(out, in, 4);
  uint8_t* bitmap = out + 4;
  std::memset(bitmap, 0, bytes);
  auto* packed = reinterpret_cast<int8_t*>(out + 4 + bytes);
  for (int64_t j = 0; j < k; ++j) {
    const int32_t i = indices[order[j]];
    bitmap[i >> 3] = static_cast<uint8_t>(bitmap[i >> 3] | (1u << (i & 7)));
    packed[j] = codes[order[j]];
  }
}

at::Tensor TopKBitmapCompressor::unpack(const at::Tensor& payload, int64_t n) const {
  const int64_t k = this->k(n), bytes = bitmap_bytes(n);
  auto listed = at::empty({4 + 5 * k}, payload.options());
  if (payload.is_cuda()) {
    const auto weights = at::arange(8, payload.options().dtype(at::kLong));
    const auto bits = payload.narrow(0, 4, bytes)
                          .to(at::kLong)
                          .unsqueeze(1)
                          .bitwise_right_shift(weights)
                          .bitwise_and(1)
                          .reshape({-1});
    // Waits for the device (nonzero's size); this method runs entry by entry on CUDA.
    const auto positions = bits.nonzero().reshape({-1});
    TORCH_CHECK_VALUE(positions.numel() == k, "topk_bitmap: corrupt payload: ", positions.numel(),
                      " bits set, expected k = ", k);
    if (k > 0) {
      TORCH_CHECK_INDEX(positions[k - 1].item<int64_t>() < n,
                        "topk_bitmap: corrupt payload: ", "a bit past the tensor's ", n,
                        " elements is set");
    }
    listed.narrow(0, 0, 4).copy_(payload.narrow(0, 0, 4));
    payload_part(listed, 4, k, at::kInt).copy_(positions);
    listed.narrow(0, 4 + 4 * k, k).copy_(payload.narrow(0, 4 + bytes, k));
    return listed;
  }
  const uint8_t* in = payload.data_ptr<uint8_t>();
  uint8_t* out = listed.data_ptr<uint8_t>();
  std::memcpy(out, in, 4);
  std::vector<int32_t> indices;
  indices.reserve(k);
  const uint8_t* bitmap = in + 4;
  for (int64_t byte = 0; byte < bytes; ++byte) {
    for (uint8_t bits = bitmap[byte]; bits != 0; bits = static_cast<uint8_t>(bits & (bits - 1))) {
      const int64_t i = 8 * byte + __builtin_ctz(bits);
      TORCH_CHECK_INDEX(i < n, "topk_bitmap: corrupt payload: bit ", i, " is set in a tensor of ",
                        n, " elements");
      TORCH_CHECK_VALUE(static_cast<int64_t>(indices.size()) < k,
                        "topk_bitmap: corrupt payload: more than k = ", k, " bits set");
      indices.push_back(static_cast<int32_t>(i));
    }
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(indices.size()) == k,
                    "topk_bitmap: corrupt payload: ", indices.size(),
                    " bits set, expected k = ", k);
  std::memcpy(out + 4, indices.data(), 4 * k);
  std::memcpy(out + 4 + 4 * k, in + 4 + bytes, k);
  return listed;
}

int64_t TopKBitmapCompressor::do_compress(const at::Tensor& input, const at::Tensor& payload,
                                          const CompressContext& ctx) const {
  const int64_t n = input.numel();
  auto listed = at::empty({selection_.payload_numel(n)}, payload.options());
  selection_.compress(input, listed, ctx);
  pack(listed, payload, n);
  return payload.numel();
}

int64_t TopKBitmapCompressor::do_compress_with_feedback(const at::Tensor& grad,
                                                        const at::Tensor& residual,
                                                        const at::Tensor& payload,
                                                        const CompressContext& ctx) const {
  const int64_t n = grad.numel();
  auto listed = at::empty({selection_.payload_numel(n)}, payload.options());
  selection_.compress_with_feedback(grad, residual, listed, ctx);
  pack(listed, payload, n);
  return payload.numel();
}

int64_t TopKBitmapCompressor::do_decompress_add(const at::Tensor& payload, const at::Tensor& out,
                                                const CompressContext& ctx) const {
  selection_.decompress_add(unpack(payload, out.numel()), out, ctx);
  return payload.numel();
}

}  // namespace gradcomp
