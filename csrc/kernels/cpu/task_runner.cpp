#include "task_runner.h"

#include <algorithm>

namespace gradcomp::kernels::cpu {
namespace {

class SerialRunner final : public TaskRunner {
 public:
  int64_t concurrency() const override { return 1; }
  void run(int64_t num_tasks, const std::function<void(int64_t)>& task) const override {
    for (int64_t i = 0; i < num_tasks; ++i) task(i);
  }
};

}  // namespace

const TaskRunner& serial_runner() {
  static const SerialRunner runner;
  return runner;
}

Chunking::Chunking(int64_t n, int64_t min_chunk, const TaskRunner& runner) : n_(n) {
  const int64_t by_size = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int64_t by_workers = 4 * std::max<int64_t>(1, runner.concurrency());
  num_chunks_ = runner.concurrency() <= 1 ? 1 : std::min(by_size, by_workers);
}

}  // namespace gradcomp::kernels::cpu
