// Per-parameter error feedback: one fp32 residual per parameter, keyed by the parameter's fully
// qualified name (not the bucket index, which DDP changes when it rebuilds buckets).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace gradcomp {

class ErrorFeedback {
 public:
  // The slot of `name`, created on first use. A parameter keeps its numel for life; a
  // different numel under the same name (a model changed under a loaded state) is an error.
  int64_t slot(const std::string& name, int64_t numel);
  // The residual of a slot: fp32, flat, zero-initialised on first use on `device`.
  at::Tensor residual(int64_t slot, const at::Device& device);

  int64_t size() const { return static_cast<int64_t>(names_.size()); }
  // Changes whenever a residual's storage is replaced (first use, a move to another device,
  // reset, load), so that device tables holding residual addresses know to rebuild.
  uint64_t generation() const { return generation_; }
  // Sum over all residuals of ||e||^2 (accumulated in double).
  double squared_norm() const;
  // Multiplies every residual by `factor`: keeps them in the units of gradients whose loss
  // scale (AMP's GradScaler) changed.
  void scale(double factor);

  // name -> copy of the residual, for every residual that exists.
  std::map<std::string, at::Tensor> state_dict() const;
  // Replaces residuals by name; each tensor must be float32 with the slot's numel.
  void load_state_dict(const std::map<std::string, at::Tensor>& state);
  void reset();

 private:
  std::vector<std::string> names_;
  std::vector<int64_t> numels_;
  std::vector<at::Tensor> residuals_;
  std::unordered_map<std::string, int64_t> slots_;
  uint64_t generation_ = 0;
};

}  // namespace gradcomp
