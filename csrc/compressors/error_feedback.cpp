#include "compressors/error_feedback.h"

#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace gradcomp {

int64_t ErrorFeedback::slot(const std::string& name, int64_t numel) {
  TORCH_CHECK_VALUE(numel >= 1, "error feedback: parameter '", name, "' has numel=", numel,
                    "; must be >= 1");
  const auto it = slots_.find(name);
  if (it != slots_.end()) {
    TORCH_CHECK_VALUE(numels_[it->second] == numel, "error feedback: parameter '", name, "' has ",
                      numel, " elements but its residual has ", numels_[it->second],
                      " (was the state loaded from a different model?)");
    return it->second;
  }
  const auto id = static_cast<int64_t>(names_.size());
  names_.push_back(name);
  numels_.push_back(numel);
  residuals_.emplace_back();
  slots_.emplace(name, id);
  return id;
}

at::Tensor ErrorFeedback::residual(int64_t slot, const at::Device& device) {
  TORCH_CHECK_INDEX(slot >= 0 && slot < size(), "error feedback: slot ", slot, " is outside [0, ",
                    size(), ")");
  auto& r = residuals_[slot];
  if (!r.defined()) {
    r = at::zeros({numels_[slot]}, at::TensorOptions().dtype(at::kFloat).device(device));
    ++generation_;
  } else if (r.device() != device) {
    r = r.to(device);
    ++generation_;
  }
  return r;
}

double ErrorFeedback::squared_norm() const {
  double total = 0.0;
  for (const auto& r : residuals_) {
    if (r.defined()) total += r.to(at::kDouble).square().sum().item<double>();
  }
  return total;
}

void ErrorFeedback::scale(double factor) {
  TORCH_CHECK_VALUE(std::isfinite(factor) && factor > 0.0, "error feedback: scale factor ", factor,
                    " is out of range; valid: a finite factor > 0");
  for (auto& r : residuals_) {
    if (r.defined()) r.mul_(factor);
  }
}

std::map<std::string, at::Tensor> ErrorFeedback::state_dict() const {
  std::map<std::string, at::Tensor> state;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (residuals_[i].defined()) state.emplace(names_[i], residuals_[i].clone());
  }
  return state;
}

void ErrorFeedback::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  for (const auto& [name, tensor] : state) {
    TORCH_CHECK_TYPE(tensor.scalar_type() == at::kFloat, "error feedback: residual '", name,
                     "' must be float32, got ", tensor.scalar_type());
    const int64_t id = slot(name, tensor.numel());
    residuals_[id] = tensor.detach().reshape({-1}).clone();
  }
  ++generation_;
}

void ErrorFeedback::reset() {
  for (auto& r : residuals_) r = at::Tensor();
  ++generation_;
}

}  // namespace gradcomp
