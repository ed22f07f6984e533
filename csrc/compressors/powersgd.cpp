#include "compressors/powersgd.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "compressors/aten_task_runner.h"
#include "compressors/cuda_kernels.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/orthonormalize.h"

namespace gradcomp {

PowerSgd::PowerSgd(int64_t rank, double min_compression)
    : rank_(rank), min_compression_(min_compression) {
  TORCH_CHECK_VALUE(rank >= 1 && rank <= 1024, "powersgd: rank=", rank,
                    " is out of range; valid: an integer rank in [1, 1024]");
  TORCH_CHECK_VALUE(std::isfinite(min_compression) && min_compression >= 1.0,
                    "powersgd: min_compression=", min_compression,
                    " is out of range; valid: min_compression >= 1");
}

std::unique_ptr<PowerSgd> PowerSgd::create(const Options& options) {
  OptionReader reader("powersgd", options);
  const int64_t rank = reader.integer("rank", 2, 1, 1024);
  const double min_compression = reader.real("min_compression", 2.0, 1.0, true, 1e9, true);
  reader.finish();
  return std::make_unique<PowerSgd>(rank, min_compression);
}

std::string PowerSgd::spec() const {
  std::ostringstream out;
  out << "powersgd:rank=" << rank_ << ",min_compression=" << min_compression_;
  return out.str();
}

int64_t PowerSgd::rank_for(int64_t rows, int64_t cols) const {
  if (rows < 2 || cols < 2) return 0;
  const int64_t r = std::min({rank_, rows, cols});
  const double low_rank = static_cast<double>((rows + cols) * r) * min_compression_;
  return low_rank <= static_cast<double>(rows * cols) ? r : 0;
}

PowerSgdCodec::PowerSgdCodec(std::shared_ptr<const PowerSgd> method,
                             std::vector<BucketEntry> entries,
                             std::shared_ptr<ErrorFeedback> error_feedback,
                             std::shared_ptr<ErrorFeedback> warm_start, uint64_t seed,
                             int64_t world_size)
    : method_(std::move(method)),
      error_feedback_(std::move(error_feedback)),
      warm_start_(std::move(warm_start)),
      seed_(seed),
      world_size_(world_size) {
  TORCH_CHECK_VALUE(method_ != nullptr && warm_start_ != nullptr,
                    "PowerSgdCodec: method and warm_start must not be null");
  TORCH_CHECK_VALUE(world_size >= 1, "PowerSgdCodec: world_size=", world_size, " must be >= 1");
  int64_t expected_offset = 0;
  first_numel_ = 1;  // the non-finite flag
  // Dense values first, then the P blocks, so round 1 is [flag | dense | P_1 .. P_L].
  for (auto& entry : entries) {
    check_entry(entry, expected_offset);
    numel_ += entry.numel;
    Placement p;
    p.entry = entry;
    p.tensor_key = parameter_key(entry.name);
    if (entry.compress && entry.rows >= 2 && entry.numel % entry.rows == 0) {
      p.rows = entry.rows;
      p.cols = entry.numel / entry.rows;
      p.rank = method_->rank_for(p.rows, p.cols);
    }
    if (p.rank == 0) {
      p.first_offset = first_numel_;
      first_numel_ += entry.numel;
    }
    placements_.push_back(std::move(p));
  }
  bucket_extent_ = expected_offset;
  for (auto& p : placements_) {
    if (p.rank == 0) continue;
    p.first_offset = first_numel_;
    first_numel_ += p.rows * p.rank;
    p.second_offset = second_numel_;
    second_numel_ += p.cols * p.rank;
    p.q_slot = warm_start_->slot(p.entry.name, p.cols * p.rank);
    if (error_feedback_) p.residual_slot = error_feedback_->slot(p.entry.name, p.entry.numel);
  }
  matrices_.resize(placements_.size());
  initial_q_.resize(placements_.size());
}

int64_t PowerSgdCodec::low_rank_matrices() const {
  return std::count_if(placements_.begin(), placements_.end(),
                       [](const Placement& p) { return p.rank > 0; });
}

void PowerSgdCodec::check_bucket(const at::Tensor& bucket) const {
  check_bucket_tensor(bucket, bucket_extent_);
}

at::Tensor PowerSgdCodec::warm_q(size_t placement, const at::Device& device) {
  const Placement& p = placements_[placement];
  auto q = warm_start_->residual(p.q_slot, device).view({p.cols, p.rank});
  // A zero Q (first use, or every rank's gradient was zero) restarts from a random draw that
  // every rank makes identically.
  const auto initial = [&] {
    auto generator =
        at::make_generator<at::CPUGeneratorImpl>(kernels::philox_key(seed_, p.tensor_key));
    return at::randn({p.cols, p.rank}, generator, at::TensorOptions().dtype(at::kFloat));
  };
  if (device.is_cpu()) {
    if (!q.any().item<bool>()) q.copy_(initial());
    return q;
  }
  // On the device, the test and the choice stay there: no wait for the host.
  auto& drawn = initial_q_[placement];
  if (!drawn.defined() || drawn.device() != device) drawn = initial().to(device);
  q.copy_(at::where(q.any(), q, drawn));
  return q;
}

at::Tensor PowerSgdCodec::encode_first(const at::Tensor& bucket, bool measure) {
  check_bucket(bucket);
  skipped_ = !all_finite(bucket.narrow(0, 0, bucket_extent_));
  measuring_ = measure && !skipped_;
  measured_ = {};
  // Every slot is written below unless this rank skips, which sends zeros and the flag.
  const auto options = bucket.options().dtype(at::kFloat);
  auto first = skipped_ ? at::zeros({first_numel_}, options) : at::empty({first_numel_}, options);
  first.narrow(0, 0, 1).fill_(skipped_ ? 1 : 0);
  for (size_t i = 0; i < placements_.size(); ++i) {
    const auto& p = placements_[i];
    const auto grad = bucket.narrow(0, p.entry.offset, p.entry.numel);
    if (p.rank == 0) {
      if (!skipped_) first.narrow(0, p.first_offset, p.entry.numel).copy_(grad);
      if (measuring_) measured_.input_sq += squared_sum(grad);
      matrices_[i] = at::Tensor();
      continue;
    }
    at::Tensor m;
    if (skipped_) {
      m = at::zeros({p.entry.numel}, first.options());  // contributes nothing, keeps nothing
    } else if (p.residual_slot >= 0) {
      m = error_feedback_->residual(p.residual_slot, bucket.device());
      m.add_(grad);
    } else {
      m = grad.scalar_type() == at::kFloat ? grad : grad.to(at::kFloat);
    }
    if (measuring_) measured_.input_sq += squared_sum(m);
    matrices_[i] = m.view({p.rows, p.cols});
    auto out = first.narrow(0, p.first_offset, p.rows * p.rank).view({p.rows, p.rank});
    at::mm_out(out, matrices_[i], warm_q(i, bucket.device()));
  }
  return first;
}

at::Tensor PowerSgdCodec::encode_second(const at::Tensor& first) {
  TORCH_CHECK_VALUE(first.scalar_type() == at::kFloat && first.dim() == 1 &&
                        first.is_contiguous() && first.numel() == first_numel_,
                    "PowerSgdCodec: round 1 must be a contiguous 1-D float32 tensor of ",
                    first_numel_, " elements, got ", first.scalar_type(), " of shape ",
                    first.sizes());
  check_supported_device(first, "powersgd");
  // Orthonormalization is scale-invariant: the sum over ranks needs no division first.
  // Matrices with fewer rows or columns than the rank use a smaller rank; one batched kernel
  // call per distinct rank.
  std::vector<float*> factors;
  std::vector<int64_t> rows;
  std::vector<int64_t> ranks;
  for (const auto& p : placements_) {
    if (p.rank > 0 && std::find(ranks.begin(), ranks.end(), p.rank) == ranks.end()) {
      ranks.push_back(p.rank);
    }
  }
  for (const int64_t r : ranks) {
    if (first.is_cuda()) {
      std::vector<at::Tensor> matrices;
      for (const auto& p : placements_) {
        if (p.rank == r) matrices.push_back(first.narrow(0, p.first_offset, p.rows * r));
      }
      cuda_kernels("powersgd").orthonormalize(matrices, r);
      continue;
    }
    factors.clear();
    rows.clear();
    for (const auto& p : placements_) {
      if (p.rank != r) continue;
      factors.push_back(first.data_ptr<float>() + p.first_offset);
      rows.push_back(p.rows);
    }
    kernels::cpu::orthonormalize_columns(
        factors.data(), rows.data(), static_cast<int64_t>(factors.size()), r, aten_task_runner());
  }

  auto second = at::empty({second_numel_}, first.options());
  for (size_t i = 0; i < placements_.size(); ++i) {
    const auto& p = placements_[i];
    if (p.rank == 0) continue;
    TORCH_CHECK(matrices_[i].defined(), "PowerSgdCodec: encode_second before encode_first");
    const auto P = first.narrow(0, p.first_offset, p.rows * p.rank).view({p.rows, p.rank});
    auto q = second.narrow(0, p.second_offset, p.cols * p.rank).view({p.cols, p.rank});
    at::mm_out(q, matrices_[i].t(), P);
    if (p.residual_slot >= 0 && !skipped_) {
      // What this rank's own gradient loses in the projection stays for the next step.
      matrices_[i].sub_(at::mm(P, q.t()));
      if (measuring_) measured_.error_sq += squared_sum(matrices_[i]);
    } else if (measuring_) {
      measured_.error_sq += squared_sum(at::sub(matrices_[i], at::mm(P, q.t())));
    }
  }
  return second;
}

DecodeOutcome PowerSgdCodec::decode(const at::Tensor& bucket, const at::Tensor& first,
                                    const at::Tensor& second) {
  check_bucket(bucket);
  TORCH_CHECK_VALUE(first.numel() == first_numel_ && second.numel() == second_numel_,
                    "PowerSgdCodec: decode got ", first.numel(), " and ", second.numel(),
                    " elements; expected ", first_numel_, " and ", second_numel_);
  const auto nonfinite = first.narrow(0, 0, 1).ne(0).squeeze(0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // On the CPU the flag is read here; on CUDA the device applies it (no wait for the host).
  if (!bucket.is_cuda() && nonfinite.item<bool>()) {
    for (auto& p : placements_) bucket.narrow(0, p.entry.offset, p.entry.numel).fill_(nan);
    for (auto& m : matrices_) m = at::Tensor();
    return DecodeOutcome::kNonFinite;
  }
  for (size_t i = 0; i < placements_.size(); ++i) {
    const auto& p = placements_[i];
    auto target = bucket.narrow(0, p.entry.offset, p.entry.numel);
    if (p.rank == 0) {
      target.copy_(first.narrow(0, p.first_offset, p.entry.numel).div(world_size_));
    } else {
      auto q = second.narrow(0, p.second_offset, p.cols * p.rank).view({p.cols, p.rank});
      q.div_(world_size_);
      auto warm = warm_start_->residual(p.q_slot, bucket.device()).view({p.cols, p.rank});
      if (bucket.is_cuda()) {
        warm.copy_(at::where(nonfinite, warm, q));
      } else {
        warm.copy_(q);
      }
      const auto P = first.narrow(0, p.first_offset, p.rows * p.rank).view({p.rows, p.rank});
      target.view({p.rows, p.cols}).copy_(at::mm(P, q.t()));
      matrices_[i] = at::Tensor();
    }
    if (bucket.is_cuda()) target.masked_fill_(nonfinite, nan);
  }
  return bucket.is_cuda() ? DecodeOutcome::kUnchecked : DecodeOutcome::kFinite;
}

}  // namespace gradcomp
