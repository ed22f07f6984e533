// A std::thread TaskRunner, so kernel tests exercise the multi-chunk paths without torch.
#pragma once

#include <atomic>
#include <thread>
#include <vector>

#include "kernels/cpu/task_runner.h"

namespace gradcomp::kernels::cpu::testing {

class ThreadRunner final : public TaskRunner {
 public:
  explicit ThreadRunner(int threads) : threads_(threads) {}
  int64_t concurrency() const override { return threads_; }
  void run(int64_t num_tasks, const std::function<void(int64_t)>& task) const override {
    std::atomic<int64_t> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads_; ++t) {
      pool.emplace_back([&] {
        for (int64_t i = next++; i < num_tasks; i = next++) task(i);
      });
    }
    for (auto& thread : pool) thread.join();
  }

 private:
  int threads_;
};

}  // namespace gradcomp::kernels::cpu::testing
