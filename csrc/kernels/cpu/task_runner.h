// How torch-free CPU kernels run work in parallel without depending on a threading library.
//
// The kernels split their input into chunks and hand the chunks to a TaskRunner. The op layer
// passes a runner backed by at::parallel_for, so kernels share torch's thread pool; the kernel
// tests pass a serial runner or one backed by std::thread. Results never depend on the runner:
// every kernel is written so that the chunking only changes speed, not output.
#pragma once

#include <cstdint>
#include <functional>

namespace gradcomp::kernels::cpu {

class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // How many tasks can usefully run at once.
  virtual int64_t concurrency() const = 0;
  // Calls task(i) exactly once for every i in [0, num_tasks) and returns when all have finished.
  // Tasks may run concurrently and must not throw.
  virtual void run(int64_t num_tasks, const std::function<void(int64_t)>& task) const = 0;
};

// Runs every task on the calling thread, in order.
const TaskRunner& serial_runner();

// A split of [0, n) into num_chunks contiguous ranges of (almost) equal size.
class Chunking {
 public:
  // At least min_chunk elements per chunk and at most four chunks per unit of concurrency
  // (a little over-decomposition evens out uneven load).
  Chunking(int64_t n, int64_t min_chunk, const TaskRunner& runner);

  int64_t size() const { return num_chunks_; }
  int64_t begin(int64_t chunk) const { return chunk * n_ / num_chunks_; }
  int64_t end(int64_t chunk) const { return (chunk + 1) * n_ / num_chunks_; }

 private:
  int64_t n_;
  int64_t num_chunks_;
};

}  // namespace gradcomp::kernels::cpu
