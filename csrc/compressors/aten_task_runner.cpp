#include "compressors/aten_task_runner.h"

#include <ATen/Parallel.h>

namespace gradcomp {
namespace {

class AtenTaskRunner final : public kernels::cpu::TaskRunner {
 public:
  int64_t concurrency() const override {
    // Inside a parallel region at::parallel_for runs inline, so report no parallelism.
    return at::in_parallel_region() ? 1 : at::get_num_threads();
  }
  void run(int64_t num_tasks, const std::function<void(int64_t)>& task) const override {
    at::parallel_for(0, num_tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) task(i);
    });
  }
};

}  // namespace

const kernels::cpu::TaskRunner& aten_task_runner() {
  static const AtenTaskRunner runner;
  return runner;
}

}  // namespace gradcomp
